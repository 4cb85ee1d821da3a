/**
 * Test kit for the RabbitMQ integration tests: a registry of the transports a test file creates
 * (their `declaredObjects()` drive cleanup), a raw client written with plain amqplib as a foreign
 * CloudEvents-AMQP producer/consumer would be, namespace cleanup, and `rabbitmqctl` helpers.
 *
 * The raw client maps headers to the CloudEvents AMQP binding on its own (it does not use the
 * transport's mapping), so the conformance cases prove interoperability, not self-consistency.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { RawBrokerClient, RawProbe } from '@busbar/conformance';
import type { WireMessage } from '@busbar/core';
import { type RabbitMqOptions, RabbitMqTransport } from '@busbar/rabbitmq';
import { type Channel, type ChannelModel, type ConsumeMessage, connect } from 'amqplib';
import { ProbeInbox } from '../brokers/probe-inbox.js';

const run = promisify(execFile);

/** Every transport created through {@link TransportRegistry.create}, for cleanup. */
export class TransportRegistry {
  private readonly transports = new Set<RabbitMqTransport>();
  /** Exchanges raw clients declared. */
  readonly rawExchanges = new Set<string>();

  constructor(
    private readonly url: string,
    private readonly defaults: RabbitMqOptions = {},
  ) {}

  /** A new transport for tests (fast reconnects). */
  create(extra: RabbitMqOptions = {}): RabbitMqTransport {
    const t = new RabbitMqTransport({
      url: this.url,
      connectionName: 'busbar-test',
      reconnect: { backoff: { initialMs: 50, maxMs: 1000, minMs: 20 } },
      ...this.defaults,
      ...extra,
    });
    this.transports.add(t);
    return t;
  }

  /** Names of everything declared under `prefix`: queues first, then exchanges. */
  namesUnder(prefix: string): { queues: string[]; exchanges: string[] } {
    const queues = new Set<string>();
    const exchanges = new Set<string>();
    for (const t of this.transports) {
      const d = t.declaredObjects();
      for (const q of d.queues) if (q.startsWith(prefix)) queues.add(q);
      for (const e of d.exchanges) if (e.startsWith(prefix)) exchanges.add(e);
    }
    for (const e of this.rawExchanges) if (e.startsWith(prefix)) exchanges.add(e);
    return { queues: [...queues], exchanges: [...exchanges] };
  }

  /** Deletes every queue and exchange declared under `prefix`. */
  async cleanup(prefix: string): Promise<void> {
    const { queues, exchanges } = this.namesUnder(prefix);
    if (queues.length === 0 && exchanges.length === 0) return;
    const conn = await connect(this.url);
    try {
      const ch = await conn.createChannel();
      ch.on('error', () => {});
      // Deleting a queue or exchange that is already gone is not an error in RabbitMQ.
      await Promise.all(queues.map((q) => ch.deleteQueue(q)));
      await Promise.all(exchanges.map((e) => ch.deleteExchange(e)));
      await ch.close();
    } finally {
      await conn.close().catch(() => {});
    }
  }

  /** Names (of everything ever declared under `prefix`) that still exist on the broker. */
  async leftovers(prefix: string): Promise<string[]> {
    const { queues, exchanges } = this.namesUnder(prefix);
    const conn = await connect(this.url);
    const left: string[] = [];
    try {
      // A passive check that fails closes its channel: one channel per check.
      const check = async (name: string, fn: (ch: Channel) => Promise<unknown>) => {
        const ch = await conn.createChannel();
        ch.on('error', () => {});
        try {
          await fn(ch);
          left.push(name);
          await ch.close();
        } catch {
          // 404: gone
        }
      };
      await Promise.all([
        ...queues.map((q) => check(`queue ${q}`, (ch) => ch.checkQueue(q))),
        ...exchanges.map((e) => check(`exchange ${e}`, (ch) => ch.checkExchange(e))),
      ]);
    } finally {
      await conn.close().catch(() => {});
    }
    return left;
  }
}

/** How a CloudEvents AMQP binding producer writes core's `ce_*` headers (independent of the transport). */
export function bindingProperties(headers: Readonly<Record<string, string>>, prefix = 'cloudEvents_') {
  const table: Record<string, string> = {};
  let contentType: string | undefined;
  for (const [k, v] of Object.entries(headers)) {
    if (k === 'content-type') contentType = v;
    else if (k.startsWith('ce_')) table[`${prefix}${k.slice(3)}`] = v;
    else table[k] = v;
  }
  return {
    persistent: true,
    headers: table,
    ...(contentType === undefined ? {} : { contentType }),
    ...(headers.ce_id === undefined ? {} : { messageId: headers.ce_id }),
  };
}

/** How a CloudEvents AMQP binding consumer reads a message back into core's header names. */
export function readBinding(msg: ConsumeMessage): WireMessage {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(msg.properties.headers ?? {})) {
    if (typeof v !== 'string') continue;
    if (k.startsWith('cloudEvents_')) out[`ce_${k.slice('cloudEvents_'.length)}`] = v;
    else if (k.startsWith('cloudEvents:')) out[`ce_${k.slice('cloudEvents:'.length)}`] = v;
    else out[k] = v;
  }
  if (typeof msg.properties.contentType === 'string') out['content-type'] = msg.properties.contentType;
  return { headers: out, body: new Uint8Array(msg.content) };
}

/** Declares the event exchange of `topic` the way the transport does (durable topic exchange). */
async function assertEventExchange(ch: Channel, topic: string, registry: TransportRegistry): Promise<void> {
  registry.rawExchanges.add(topic);
  await ch.assertExchange(topic, 'topic', { durable: true });
}

/** A raw amqplib client for the conformance suite. */
export async function createRawClient(url: string, registry: TransportRegistry): Promise<RawBrokerClient> {
  const conn = await connect(url);
  conn.on('error', () => {});
  const ch = await conn.createConfirmChannel();
  ch.on('error', () => {});
  const probes = new Set<RawProbe>();
  return {
    async write(topic, message) {
      await assertEventExchange(ch, topic, registry);
      await new Promise<void>((resolve, reject) => {
        ch.publish(topic, topic, Buffer.from(message.body), bindingProperties(message.headers), (err: unknown) =>
          err ? reject(err) : resolve(),
        );
      });
    },
    async observe(topic) {
      const probe = await observe(url, topic, registry);
      probes.add(probe);
      return probe;
    },
    async close() {
      await Promise.allSettled([...probes].map((p) => p.close()));
      await conn.close().catch(() => {});
    },
  };
}

/** Binds an exclusive, server-named queue to the event exchange on its own connection. */
async function observe(url: string, topic: string, registry: TransportRegistry): Promise<RawProbe> {
  const conn: ChannelModel = await connect(url);
  conn.on('error', () => {});
  const ch = await conn.createChannel();
  ch.on('error', () => {});
  await assertEventExchange(ch, topic, registry);
  const { queue } = await ch.assertQueue('', { exclusive: true, autoDelete: true, durable: false });
  await ch.bindQueue(queue, topic, '#');
  const inbox = new ProbeInbox(`on ${topic}`);
  await ch.consume(
    queue,
    (msg) => {
      if (!msg) return;
      const wire = readBinding(msg);
      inbox.add(wire.headers.ce_id ?? '', wire);
    },
    { noAck: true },
  );
  return {
    waitFor: (id, timeoutMs) => inbox.waitFor(id, timeoutMs),
    async close() {
      // The exclusive queue disappears with its connection.
      await conn.close().catch(() => {});
    },
  };
}

/** Runs `rabbitmqctl` with `args`; returns stdout. */
export async function rabbitmqctl(...args: string[]): Promise<string> {
  const { stdout } = await run('rabbitmqctl', args, { timeout: 30_000 });
  return stdout;
}

/** Whether `rabbitmqctl` can talk to the local node (false when the broker is remote). */
export async function rabbitmqctlAvailable(): Promise<boolean> {
  try {
    await rabbitmqctl('-q', 'status');
    return true;
  } catch {
    return false;
  }
}

/** Force-closes every connection whose `connection_name` is `name` (as an operator or a network fault would). */
export async function closeConnectionsNamed(name: string): Promise<number> {
  const out = await rabbitmqctl('list_connections', 'pid', 'client_properties', '-q', '--no-table-headers');
  const pids = out
    .split('\n')
    .filter((line) => line.includes(`{"connection_name","${name}"}`))
    .map((line) => line.split('\t')[0] ?? '')
    .filter(Boolean);
  await Promise.all(pids.map((pid) => rabbitmqctl('close_connection', pid, 'busbar fault test')));
  return pids.length;
}

/** `rabbitmqctl list_queues name durable type arguments` rows for queues starting with `prefix`. */
export async function listQueues(prefix: string): Promise<{ name: string; durable: boolean; type: string; arguments: string }[]> {
  const out = await rabbitmqctl('list_queues', 'name', 'durable', 'type', 'arguments', '-q', '--no-table-headers');
  return out
    .split('\n')
    .filter((l) => l.startsWith(prefix))
    .map((l) => {
      const [name = '', durable = '', type = '', args = ''] = l.split('\t');
      return { name, durable: durable === 'true', type, arguments: args };
    });
}

/** Open channels of each connection whose `connection_name` is `name`. */
export async function channelsOfConnections(name: string): Promise<number[]> {
  const out = await rabbitmqctl('list_connections', 'client_properties', 'channels', '-q', '--no-table-headers');
  return out
    .split('\n')
    .filter((line) => line.includes(`{"connection_name","${name}"}`))
    .map((line) => Number(line.split('\t').at(-1)));
}

/** Consumers of `queue` as the broker counts them (`undefined` when the queue does not exist). */
export async function consumersOf(queue: string): Promise<number | undefined> {
  const out = await rabbitmqctl('list_queues', 'name', 'consumers', '-q', '--no-table-headers');
  const row = out.split('\n').find((line) => line.split('\t')[0] === queue);
  return row === undefined ? undefined : Number(row.split('\t')[1]);
}
