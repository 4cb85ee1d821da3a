/**
 * The SASL/PLAIN listener of a Kafka used by the tests of good and bad credentials (issue 14):
 * where it is, with which test user, and a check that a Kafka being reused really has it.
 *
 * `integration/brokers/kafka/kafka.sh` opens it next to the PLAINTEXT listener, on
 * `BUSBAR_KAFKA_SASL_PORT` (default: the PLAINTEXT port + 3, i.e. 9095), user
 * `BUSBAR_KAFKA_SASL_USER` / `BUSBAR_KAFKA_SASL_PASSWORD` (`busbar` / `busbar-secret`: a test
 * credential of a local test broker). For another cluster, `BUSBAR_KAFKA_SASL_BROKERS` (plus user
 * and password) names its SASL/PLAIN listener.
 */
import { connect } from 'node:net';
import type { BrokerVia } from './index.js';

/** A SASL/PLAIN listener and the test user to authenticate with. */
export interface KafkaSaslListener {
  /** Comma-separated `host:port`s of the SASL_PLAINTEXT listener. */
  readonly brokers: string;
  readonly username: string;
  readonly password: string;
}

/** The outcome of {@link resolveKafkaSasl}. */
export type KafkaSaslResolution = { ok: true; listener: KafkaSaslListener } | { ok: false; reason: string };

const DEFAULT_USER = 'busbar';
const DEFAULT_PASSWORD = 'busbar-secret';

/** Where kafka.sh puts the SASL listener for the PLAINTEXT port `plainPort` (`BUSBAR_KAFKA_SASL_PORT`, else port + 3). */
export function kafkaSaslPort(plainPort: number): number | undefined {
  const configured = process.env.BUSBAR_KAFKA_SASL_PORT?.trim();
  if (configured === 'off') return undefined;
  if (configured) return Number(configured);
  return plainPort + 3;
}

/**
 * Whether `host:port` is a Kafka listener that offers SASL mechanism PLAIN: sends one
 * SaslHandshake (API key 17, v1) and reads the answer. A PLAINTEXT listener answers with an error
 * code (or closes the connection); nothing listening, or no answer within `timeoutMs`, is `false`.
 */
export function offersSaslPlain(host: string, port: number, timeoutMs = 3000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    let received = Buffer.alloc(0);
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('error', () => done(false));
    socket.once('close', () => done(false));
    socket.once('connect', () => socket.write(saslHandshakeRequest('PLAIN')));
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length < 4) return;
      const size = received.readInt32BE(0);
      if (received.length < 4 + size) return;
      done(parseHandshake(received.subarray(4, 4 + size)).includes('PLAIN'));
    });
  });
}

const CORRELATION_ID = 0x5a51;

/** SaslHandshake v1 with request header v1: size, api key, version, correlation id, client id; mechanism. */
function saslHandshakeRequest(mechanism: string): Buffer {
  const str = (s: string) => {
    const b = Buffer.from(s, 'utf8');
    const len = Buffer.alloc(2);
    len.writeInt16BE(b.length);
    return Buffer.concat([len, b]);
  };
  const head = Buffer.alloc(8);
  head.writeInt16BE(17, 0); // SaslHandshake
  head.writeInt16BE(1, 2); // v1
  head.writeInt32BE(CORRELATION_ID, 4);
  const body = Buffer.concat([head, str('busbar-sasl-check'), str(mechanism)]);
  const size = Buffer.alloc(4);
  size.writeInt32BE(body.length);
  return Buffer.concat([size, body]);
}

/** The mechanisms of a SaslHandshake response (correlation id, error code, [mechanism]); empty on an error code. */
function parseHandshake(response: Buffer): string[] {
  if (response.length < 10 || response.readInt32BE(0) !== CORRELATION_ID || response.readInt16BE(4) !== 0) return [];
  const count = response.readInt32BE(6);
  const out: string[] = [];
  let at = 10;
  for (let i = 0; i < count && at + 2 <= response.length; i++) {
    const len = response.readInt16BE(at);
    out.push(response.toString('utf8', at + 2, at + 2 + len));
    at += 2 + len;
  }
  return out;
}

/**
 * The SASL/PLAIN listener that goes with a resolved Kafka: `BUSBAR_KAFKA_SASL_BROKERS` if set
 * (not checked: the caller named it); else, for the local broker (`via` `localhost` / `kafka.sh`),
 * kafka.sh's listener at 127.0.0.1:{@link kafkaSaslPort}, verified with a SASL handshake. A Kafka
 * found otherwise (BUSBAR_KAFKA_BROKERS, testcontainers) has no known SASL listener.
 */
export async function resolveKafkaSasl(kafkaUrl: string, via: BrokerVia): Promise<KafkaSaslResolution> {
  const username = process.env.BUSBAR_KAFKA_SASL_USER?.trim() || DEFAULT_USER;
  const password = process.env.BUSBAR_KAFKA_SASL_PASSWORD ?? DEFAULT_PASSWORD;
  const fromEnv = process.env.BUSBAR_KAFKA_SASL_BROKERS?.trim();
  if (fromEnv) return { ok: true, listener: { brokers: fromEnv, username, password } };
  if (via !== 'localhost' && via !== 'kafka.sh')
    return {
      ok: false,
      reason: `kafka SASL: the Kafka at ${kafkaUrl} came from ${via}; set BUSBAR_KAFKA_SASL_BROKERS (and BUSBAR_KAFKA_SASL_USER / _PASSWORD) to its SASL/PLAIN listener`,
    };
  const plainPort = Number(kafkaUrl.split(',')[0]?.split(':').pop());
  const port = kafkaSaslPort(plainPort);
  if (port === undefined) return { ok: false, reason: 'kafka SASL: BUSBAR_KAFKA_SASL_PORT=off' };
  if (!(await offersSaslPlain('127.0.0.1', port)))
    return {
      ok: false,
      reason: `kafka SASL: the Kafka at ${kafkaUrl} has no SASL/PLAIN listener at 127.0.0.1:${port} (a broker started by an older kafka.sh? restart it: bash integration/brokers/kafka/kafka.sh stop && … start)`,
    };
  return { ok: true, listener: { brokers: `127.0.0.1:${port}`, username, password } };
}
