/**
 * What both client implementations (`kafkajs-client.ts`, `platformatic-client.ts`) share: their
 * settings, the errors they raise for the transport to classify, the broker errors after which a
 * retry cannot help, and the walk over a client error's causes. Imports no client library.
 * @internal
 */
import type { Logger } from '@busbar/core/transport';
import type { SASLOptions } from 'kafkajs';
import type { ErrorKind } from './client.js';

/** Settings of a client (resolved transport options). */
export interface ClientSettings {
  readonly brokers: readonly string[];
  readonly clientId: string;
  readonly ssl?: boolean | Record<string, unknown> | undefined;
  readonly sasl?: SASLOptions | undefined;
  readonly socketConnectTimeoutMs: number;
  readonly requestTimeoutMs: number;
  /** Retries of one client request. */
  readonly requestRetries: number;
  /** Longest wait between two retries of a request, ms. */
  readonly maxRetryTimeMs: number;
  /** Broker-side wait for the in-sync replicas' acknowledgement, ms. */
  readonly ackTimeoutMs: number;
  readonly logger: Logger;
}

/** Offsets can only be set on a group without running members (classified as `'group-not-empty'`). */
export class GroupNotEmptyError extends Error {
  constructor(groupId: string, state: string) {
    super(`consumer group ${groupId} has running members (state ${state})`);
    this.name = 'GroupNotEmptyError';
  }
}

/** A request timed out: the connection it used is presumed dead (half-open, black-holed). */
export class RequestTimedOutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RequestTimedOutError';
  }
}

/**
 * Broker error names (Kafka protocol error codes, as kafkajs's `type` and @platformatic/kafka's
 * `apiId` spell them) after which retrying the same request cannot help.
 */
export const REJECTED_ERRORS: ReadonlySet<string> = new Set([
  'MESSAGE_TOO_LARGE',
  'RECORD_LIST_TOO_LARGE',
  'INVALID_RECORD',
  'CORRUPT_MESSAGE',
  'INVALID_TOPIC_EXCEPTION',
  'TOPIC_AUTHORIZATION_FAILED',
  'CLUSTER_AUTHORIZATION_FAILED',
  'GROUP_AUTHORIZATION_FAILED',
  'TRANSACTIONAL_ID_AUTHORIZATION_FAILED',
  'SASL_AUTHENTICATION_FAILED',
  'INVALID_REQUIRED_ACKS',
  'POLICY_VIOLATION',
  'INVALID_REPLICATION_FACTOR',
  'INVALID_PARTITIONS',
  'INVALID_CONFIG',
  'UNSUPPORTED_VERSION',
]);

/**
 * Broker error names after which the credentials or permissions are refused for good (classified
 * `'auth'`; checked before {@link REJECTED_ERRORS}).
 */
export const AUTH_ERRORS: ReadonlySet<string> = new Set([
  'SASL_AUTHENTICATION_FAILED',
  'UNSUPPORTED_SASL_MECHANISM',
  'TOPIC_AUTHORIZATION_FAILED',
  'CLUSTER_AUTHORIZATION_FAILED',
  'GROUP_AUTHORIZATION_FAILED',
  'TRANSACTIONAL_ID_AUTHORIZATION_FAILED',
  'DELEGATION_TOKEN_AUTHORIZATION_FAILED',
]);

/** Client error names (kafkajs) and codes (`@platformatic/kafka`) of a refused authentication. */
const AUTH_ERROR_NAMES: ReadonlySet<string> = new Set(['KafkaJSSASLAuthenticationError']);
const AUTH_ERROR_CODES: ReadonlySet<string> = new Set(['PLT_KFK_AUTHENTICATION']);

/** Whether `error` (or one of its causes) is a refused authentication or authorization. */
export function isAuthFailure(error: unknown): boolean {
  for (const e of errorChain(error)) {
    if (typeof e.type === 'string' && AUTH_ERRORS.has(e.type)) return true; // kafkajs
    if (typeof e.apiId === 'string' && AUTH_ERRORS.has(e.apiId)) return true; // @platformatic/kafka
    if (typeof e.name === 'string' && AUTH_ERROR_NAMES.has(e.name)) return true;
    if (typeof e.code === 'string' && AUTH_ERROR_CODES.has(e.code)) return true;
  }
  return false;
}

/**
 * How a client error reads to the transport (see `KafkaClient.classify`): the same for both
 * clients, since broker error names arrive as kafkajs's `type` or `@platformatic/kafka`'s `apiId`.
 */
export function classifyError(error: unknown): ErrorKind {
  if (isAuthFailure(error)) return 'auth';
  for (const e of errorChain(error)) {
    if (typeof e.type === 'string' && REJECTED_ERRORS.has(e.type)) return 'rejected'; // kafkajs
    if (typeof e.apiId === 'string' && REJECTED_ERRORS.has(e.apiId)) return 'rejected'; // @platformatic/kafka
    if (e.name === 'GroupNotEmptyError') return 'group-not-empty';
  }
  return 'unavailable';
}

/** Walks an error's `cause` / `originalError` (kafkajs) / `errors` chain. */
export function* errorChain(error: unknown, depth = 0): Generator<Record<string, unknown>> {
  if (depth > 6 || typeof error !== 'object' || error === null) return;
  const e = error as Record<string, unknown>;
  yield e;
  if (e.cause !== undefined && e.cause !== error) yield* errorChain(e.cause, depth + 1);
  if (e.originalError !== undefined) yield* errorChain(e.originalError, depth + 1);
  if (Array.isArray(e.errors)) for (const inner of e.errors) yield* errorChain(inner, depth + 1);
}

/** The bytes of `u` as a Buffer, without copying. */
export function toBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/**
 * The sends of one idempotent producer, one at a time, and the producer's end (both clients):
 *
 * - the clients roll a partition's sequence number back after a failed produce request and retry
 *   it later; a send issued in between would reuse that sequence, and if the failed request did
 *   land, the broker takes the newer batch for its duplicate — acknowledged, never appended. So
 *   sends run one after another, and after a send of unknown outcome (any failure but a broker
 *   rejection) the producer refuses further sends: the transport replaces it (new producer id);
 * - {@link breakWith} (a request timed out, the producer closed) rejects the pending sends at once
 *   and every later one.
 */
export class SerialSends {
  private broken: Error | undefined;
  private readonly onBroken = new Set<(error: Error) => void>();
  private tail: Promise<void> = Promise.resolve();

  /** @param isRejection whether a failed send was refused by the broker (nothing appended). */
  constructor(private readonly isRejection: (error: unknown) => boolean) {}

  /** Whether the producer was broken (it then refuses every send). */
  get isBroken(): boolean {
    return this.broken !== undefined;
  }

  /** Breaks the producer with `error` (the first error wins): pending and later sends reject with it. */
  breakWith(error: Error): void {
    if (this.broken) return;
    this.broken = error;
    for (const reject of this.onBroken) reject(error);
    this.onBroken.clear();
  }

  /** Runs `send` after every earlier one settled; rejects at once when the producer breaks meanwhile. */
  async run(send: () => Promise<void>): Promise<void> {
    if (this.broken) throw this.broken;
    let reject!: (error: Error) => void;
    const broken = new Promise<never>((_, r) => {
      reject = r;
    });
    this.onBroken.add(reject);
    const run = this.tail.then(async () => {
      if (this.broken) throw this.broken;
      try {
        await send();
      } catch (error) {
        if (!this.isRejection(error)) this.breakWith(error instanceof Error ? error : new Error(String(error)));
        throw error;
      }
    });
    this.tail = run.then(
      () => {},
      () => {},
    );
    try {
      await Promise.race([run, broken]);
    } finally {
      this.onBroken.delete(reject);
    }
  }
}
