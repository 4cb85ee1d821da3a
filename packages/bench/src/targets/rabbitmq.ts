/**
 * RabbitMQ: Busbar's `RabbitMqTransport` against amqplib used by hand on a confirm channel with
 * persistent messages — one confirm awaited per message, and a confirm window of 500
 * (`waitForConfirms`) — and a consumer with the same prefetch. Peers: rascal (same amqplib) and
 * @message-queue-toolkit/amqp (amqplib 0.10, in packages/bench-peer-mqt). Ceiling: a PerfTest-like
 * Java publisher on amqp-client (java/ConfirmPublisherPerf.java).
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import type { Transport } from '@busbar/core';
import { type ChannelModel, type ConfirmChannel, connect } from 'amqplib';
import { repoRoot } from '../brokers.js';
import { BenchEvent, BusbarImpl } from '../busbar.js';
import { type Ceiling, type Consumer, type Impl, publishOnly, type Target } from '../impl.js';
import { toolClasspath } from '../javatools.js';
import { ceHeaders, type Payload } from '../payload.js';
import { versionOf } from '../versions.js';
import { busbarOr, loadTransport, safeUrl } from './common.js';

/** Queue type of the raw baseline: the one Busbar's transport declares (`BUSBAR_BENCH_RABBITMQ_QUEUE_TYPE` overrides). */
const queueType = process.env.BUSBAR_BENCH_RABBITMQ_QUEUE_TYPE ?? 'quorum';

/** Version of the RabbitMQ Java client the ceiling tool runs on (fetched from Maven Central once). */
const AMQP_CLIENT = '5.37.1';

/** Unconfirmed messages the ceiling tool keeps outstanding (`perf-test --confirm 500`). */
const CEILING_WINDOW = 500;

/** amqplib by hand: persistent messages on a confirm channel, consumer with prefetch = concurrency, one ack per message. */
class RawRabbit implements Impl {
  readonly description =
    `amqplib confirm channel, persistent, ${queueType} queue; confirm per message / window of 500 (waitForConfirms); prefetch = concurrency`;
  private conn: ChannelModel | undefined;
  private ch: ConfirmChannel | undefined;
  private readonly queue: string;

  constructor(
    readonly label: string,
    private readonly url: string,
    runId: string,
    private readonly withHeaders = false,
  ) {
    this.queue = `bench-${runId}.raw.${label}`;
  }

  private options() {
    return this.withHeaders
      ? { persistent: true, contentType: 'application/json', headers: ceHeaders() }
      : { persistent: true, contentType: 'application/json' };
  }

  async open(): Promise<void> {
    this.conn = await connect(this.url);
    this.ch = await this.conn.createConfirmChannel();
    await this.ch.assertQueue(this.queue, { durable: true, arguments: { 'x-queue-type': queueType } });
  }

  publish(p: Payload): Promise<void> {
    return new Promise((resolve, reject) => {
      (this.ch as ConfirmChannel).sendToQueue(
        this.queue,
        Buffer.from(JSON.stringify(p)),
        { persistent: true, contentType: 'application/json' },
        (err) => (err ? reject(err) : resolve()),
      );
    });
  }

  async publishBatch(ps: Payload[]): Promise<void> {
    const ch = this.ch as ConfirmChannel;
    for (const p of ps) ch.sendToQueue(this.queue, Buffer.from(JSON.stringify(p)), this.options());
    await ch.waitForConfirms();
  }

  async consume(concurrency: number, handler: (p: Payload) => Promise<void>, settled: () => void): Promise<Consumer> {
    await (this.ch as ConfirmChannel).purgeQueue(this.queue); // messages of the publish-only scenarios
    const ch = await (this.conn as ChannelModel).createChannel();
    await ch.prefetch(concurrency);
    const { consumerTag } = await ch.consume(
      this.queue,
      (m) => {
        if (!m) return;
        handler(JSON.parse(m.content.toString('utf8')) as Payload).then(() => {
          ch.ack(m);
          settled();
        });
      },
      { noAck: false },
    );
    return {
      stop: async () => {
        await ch.cancel(consumerTag);
        await ch.close();
      },
    };
  }

  async close(): Promise<void> {
    try {
      await this.ch?.deleteQueue(this.queue);
    } finally {
      await this.conn?.close();
    }
  }
}

/**
 * Deletes the queues and exchanges of Busbar's run: those the transport reports it declared
 * (`declaredObjects()`), else those `rabbitmqctl` lists with `fragment` in their name (when this host has it).
 */
async function deleteObjectsContaining(url: string, fragment: string, transport: Transport | undefined): Promise<void> {
  const declared = (
    transport as { declaredObjects?: () => { queues: readonly string[]; exchanges: readonly string[] } } | undefined
  )?.declaredObjects?.();
  if (declared) return deleteObjects(url, declared.queues, declared.exchanges);
  const ctl = (what: string) =>
    (spawnSync('rabbitmqctl', ['-q', what, 'name'], { encoding: 'utf8', timeout: 20_000 }).stdout ?? '')
      .split('\n')
      .map((s) => s.trim())
      .filter((s) => s.includes(fragment));
  return deleteObjects(url, ctl('list_queues'), ctl('list_exchanges'));
}

/** Deletes queues and exchanges by name (a channel each: a failed delete closes its channel). */
async function deleteObjects(url: string, queues: readonly string[], exchanges: readonly string[]): Promise<void> {
  const conn = await connect(url);
  try {
    for (const q of new Set(queues)) {
      const ch = await conn.createChannel();
      ch.on('error', () => {});
      await ch.deleteQueue(q).catch(() => {});
      await ch.close().catch(() => {});
    }
    for (const e of new Set(exchanges)) {
      const ch = await conn.createChannel();
      ch.on('error', () => {});
      await ch.deleteExchange(e).catch(() => {});
      await ch.close().catch(() => {});
    }
  } finally {
    await conn.close();
  }
}

/**
 * Busbar's impl, with the `sink` group of the publish-only scenarios (see `preparePublishOnly`)
 * deleted before it first consumes, as the raw loop purges its queue there: otherwise every
 * message of s3–s5 is also written to the sink's quorum queue (bound to the same exchange, never
 * read, growing all run), so the broker — on the same cores as the client — does twice the work
 * for Busbar's messages.
 */
function withoutSinkWhenConsuming(url: string, impl: Impl | { skip: string }): Impl | { skip: string } {
  if ('skip' in impl || !(impl instanceof BusbarImpl)) return impl;
  const consume = impl.consume.bind(impl);
  let dropped = false;
  impl.consume = async (concurrency, handler, settled) => {
    if (!dropped) {
      dropped = true;
      await deleteObjects(url, [`${impl.eventBus.topicOf(BenchEvent)}:sink`], []);
    }
    return consume(concurrency, handler, settled);
  };
  return impl;
}

/** Builds the RabbitMQ target. */
export async function createTarget(url: string, via: string, runId: string, full: boolean): Promise<Target> {
  const ctor = await loadTransport<{ url: string }>('@busbar/rabbitmq', 'RabbitMqTransport');
  const conn = await connect(url);
  const props = (conn.connection as unknown as { serverProperties?: Record<string, unknown> }).serverProperties ?? {};
  await conn.close();
  const version = String(props.version ?? '?');
  const peers = (await import('./rabbitmq-peers.js')) as typeof import('./rabbitmq-peers.js');
  return {
    name: 'rabbitmq',
    broker: `RabbitMQ ${version} at ${safeUrl(url)} via ${via}`,
    versions: { rabbitmq: version, rascal: versionOf('rascal'), ...(await peers.rabbitPeerVersions()) },
    counts: full
      ? { s1: 3_000, s2: 40_000, s3: 40_000, s4Seconds: 10, s6: 2_000 }
      : { s1: 1_000, s2: 15_000, s3: 15_000, s4Seconds: 2, s6: 1_000 },
    busbar: (bytes) =>
      withoutSinkWhenConsuming(
        url,
        busbarOr(
          ctor,
          { url },
          `bench-${runId}-q${bytes}`,
          (ns, transport) => deleteObjectsContaining(url, ns, transport),
          'Busbar EventBus over RabbitMqTransport (confirms, persistent)',
        ),
      ),
    raw: (instance, bytes) => new RawRabbit(instance === 1 ? 'raw' : 'raw-2', url, `${runId}-${bytes}`),
    peers: (bytes) => [
      publishOnly(
        'raw+ce-headers',
        'amqplib as raw, plus the 9 CloudEvents headers Busbar sends (diagnostic)',
        new RawRabbit('rawh', url, `${runId}-${bytes}`, true),
      ),
      ...peers.rabbitPeers(url, `${runId}-${bytes}`, queueType),
    ],
    ceiling: async (id) => {
      // RabbitMQ PerfTest (com.rabbitmq:perf-test) is not served by the Maven mirror here: a
      // PerfTest-like publisher on the Java client does the same job (see the .java file).
      const cp = toolClasspath(`amqp-client-${AMQP_CLIENT}`, `com.rabbitmq:amqp-client:${AMQP_CLIENT}`, (m) =>
        process.stderr.write(`\n${m}\n`),
      );
      if (!cp) return undefined;
      const queue = `bench-${id}.ceiling`;
      try {
        const r = spawnSync(
          'java',
          [
            '-Xmx256m',
            '-cp',
            cp,
            join(repoRoot, 'packages', 'bench', 'java', 'ConfirmPublisherPerf.java'),
            '--queue',
            queue,
            '--queue-type',
            queueType,
            '--count',
            String(full ? 300_000 : 100_000),
            '--warmup',
            '10000',
            '--size',
            '256',
            '--confirm',
            String(CEILING_WINDOW),
          ],
          // The URI (with its credentials) goes through the environment, not the command line.
          { encoding: 'utf8', timeout: 300_000, env: { ...process.env, BUSBAR_BENCH_AMQP_URI: url } },
        );
        const m = /rate=([\d.]+) count=\d+ nacked=(\d+)/.exec(r.stdout ?? '');
        if (!m) throw new Error(`ConfirmPublisherPerf: ${(r.stderr || r.stdout || `exit ${r.status}`).slice(-300)}`);
        if (Number(m[2]) > 0) throw new Error(`ConfirmPublisherPerf: ${m[2]} messages were nacked`);
        return {
          tool: `PerfTest-like publisher on amqp-client ${AMQP_CLIENT} (PerfTest itself is not served here)`,
          what: `256 B persistent, ${queueType} queue, publisher confirms with up to ${CEILING_WINDOW} outstanding, 1 channel, no consumer`,
          msgPerSec: Number(m[1]),
          busbarScenario: 's2',
        } satisfies Ceiling;
      } finally {
        // The tool deletes its queue; make sure of it if it died first.
        await deleteObjects(url, [queue], []).catch(() => {});
      }
    },
    dispose: async () => {},
  };
}
