/**
 * `@message-queue-toolkit/amqp` as a peer of `@busbar/bench`, on its own amqplib 0.10 (Busbar uses
 * amqplib 2.x): a queue publisher and a queue consumer with one zod schema, validated on both sides.
 * See README.md for what it cannot do like Busbar (publisher confirms, a prefetch option).
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import {
  AbstractAmqpQueueConsumer,
  AbstractAmqpQueuePublisher,
  type AMQPConsumerDependencies,
  AmqpConnectionManager,
  AmqpConsumerErrorResolver,
} from '@message-queue-toolkit/amqp';
import { MessageHandlerConfigBuilder } from '@message-queue-toolkit/core';
import { type Channel, type ChannelModel, connect } from 'amqplib';
import { z } from 'zod';

/** The benchmark payload (the bench's `Payload`). */
export interface BenchPayload {
  seq: number;
  t: number;
  pad: string;
}

const MESSAGE_TYPE = 'bench.message';

/** The toolkit's message: its id, type and timestamp fields around the benchmark payload. */
const BENCH_MESSAGE = z.object({
  id: z.string(),
  messageType: z.literal(MESSAGE_TYPE),
  timestamp: z.string(),
  seq: z.number(),
  t: z.number(),
  pad: z.string(),
});
type BenchMessage = z.infer<typeof BENCH_MESSAGE>;

type Deps = AMQPConsumerDependencies;

/** A silent logger (the toolkit logs at info on connect); errors go to `onError`. */
function dependencies(onError: (e: unknown) => void): Deps {
  const noop = () => {};
  const logger = {
    level: 'silent',
    fatal: noop,
    error: noop,
    warn: noop,
    info: noop,
    debug: noop,
    trace: noop,
    silent: noop,
    isLevelEnabled: () => false,
    child: () => logger,
  };
  return {
    logger: logger as unknown as Deps['logger'],
    errorReporter: { report: (r: { error: unknown }) => onError(r.error) },
    consumerErrorResolver: new AmqpConsumerErrorResolver(),
    transactionObservabilityManager: undefined as unknown as Deps['transactionObservabilityManager'],
    amqpConnectionManager: undefined as unknown as AmqpConnectionManager,
  };
}

type QueueOptions = { queueName: string; queueOptions: { durable: boolean; arguments: Record<string, unknown> } };

class BenchPublisher extends AbstractAmqpQueuePublisher<BenchMessage> {
  constructor(deps: Deps, creationConfig: QueueOptions) {
    super(deps, {
      creationConfig,
      messageSchemas: [BENCH_MESSAGE],
      messageTypeResolver: { messageTypePath: 'messageType' },
      isLazyInitEnabled: false,
    });
  }
}

/**
 * A queue consumer with one handler. The toolkit has no prefetch option: the prefetch is set on the
 * consumer's channel in `createMissingEntities`, which runs just before it starts consuming.
 */
class BenchConsumer extends AbstractAmqpQueueConsumer<BenchMessage, undefined> {
  constructor(
    deps: Deps,
    creationConfig: QueueOptions,
    private readonly prefetch: number,
    handler: (m: BenchMessage) => Promise<void>,
    private readonly acked: () => void,
  ) {
    super(
      deps,
      {
        creationConfig,
        messageTypeResolver: { messageTypePath: 'messageType' },
        handlers: new MessageHandlerConfigBuilder<BenchMessage, undefined>()
          .addConfig(BENCH_MESSAGE, async (m) => {
            await handler(m);
            return { result: 'success' };
          })
          .build(),
      },
      undefined,
    );
  }

  protected override async createMissingEntities(): Promise<void> {
    await super.createMissingEntities();
    await this.channel.prefetch(this.prefetch);
  }

  /** Called right after the toolkit acknowledged a message (`consumed`). */
  protected override handleMessageProcessed(
    params: Parameters<AbstractAmqpQueueConsumer<BenchMessage, undefined>['handleMessageProcessed']>[0],
  ): void {
    super.handleMessageProcessed(params);
    if (params.processingResult.status === 'consumed') this.acked();
  }
}

/** A running consumer. */
export interface PeerConsumer {
  stop(): Promise<void>;
}

/**
 * `@message-queue-toolkit/amqp` on one quorum (or `queueType`) queue: a publisher with persistent
 * messages and no publisher confirms (the toolkit has none), and consumers with prefetch =
 * concurrency. One `AmqpConnectionManager` connection for the toolkit, one plain amqplib
 * connection for queue depth, purge and delete.
 */
export class MqtPeer {
  private manager: AmqpConnectionManager | undefined;
  private publisher: BenchPublisher | undefined;
  private admin: ChannelModel | undefined;
  private adminCh: Channel | undefined;
  private readonly creation: QueueOptions;
  private readonly deps: Deps;
  /** Publishes since the last purge. */
  private sent = 0;
  /** Deliveries handed to a handler since the last purge. */
  private received = 0;
  private firstError: unknown;

  constructor(
    private readonly url: string,
    readonly queue: string,
    queueType: string,
  ) {
    this.creation = { queueName: queue, queueOptions: { durable: true, arguments: { 'x-queue-type': queueType } } };
    this.deps = dependencies((e) => {
      this.firstError ??= e;
    });
  }

  async open(): Promise<void> {
    const u = new URL(this.url);
    this.manager = new AmqpConnectionManager(
      {
        hostname: u.hostname,
        port: Number(u.port || 5672),
        username: u.username || 'guest',
        password: u.password || 'guest',
        vhost: u.pathname.slice(1),
        useTls: u.protocol === 'amqps:',
      },
      this.deps.logger,
    );
    this.deps.amqpConnectionManager = this.manager;
    await this.manager.init();
    this.publisher = new BenchPublisher(this.deps, this.creation);
    await this.publisher.init();
    this.admin = await connect(this.url);
    this.adminCh = await this.admin.createChannel();
  }

  /** The toolkit's publish: validates, serializes, writes to the channel and returns (no confirm). */
  publish(p: BenchPayload): void {
    (this.publisher as BenchPublisher).publish(
      { id: randomUUID(), messageType: MESSAGE_TYPE, timestamp: new Date().toISOString(), seq: p.seq, t: p.t, pad: p.pad },
      { publishOptions: { persistent: true, contentType: 'application/json' } },
    );
    this.sent++;
  }

  /**
   * Resolves once the broker holds everything published since the last purge: the queue's ready
   * count plus the deliveries handed to a handler reach the number published (rejects after
   * `timeoutMs`). The count is read after the delivery counter, so it can only undercount.
   */
  async flush(timeoutMs = 120_000): Promise<void> {
    const ch = this.adminCh as Channel;
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const received = this.received;
      const { messageCount } = await ch.checkQueue(this.queue);
      if (messageCount + received >= this.sent) return;
      if (this.firstError !== undefined) throw this.firstError;
      if (performance.now() > deadline) {
        throw new Error(`broker holds ${messageCount} ready + ${received} delivered of ${this.sent} published after ${timeoutMs} ms`);
      }
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  /**
   * Purges the queue (messages of the publish-only runs), then starts a toolkit consumer with
   * prefetch = `concurrency`; `settled` runs after each acknowledgement.
   */
  async consume(concurrency: number, handler: (p: BenchPayload) => Promise<void>, settled: () => void): Promise<PeerConsumer> {
    await (this.adminCh as Channel).purgeQueue(this.queue);
    this.sent = 0;
    this.received = 0;
    const consumer = new BenchConsumer(
      this.deps,
      this.creation,
      concurrency,
      (m) => {
        this.received++;
        return handler(m);
      },
      settled,
    );
    await consumer.start();
    return { stop: () => consumer.close() };
  }

  /** Closes the toolkit's connection and deletes the queue. */
  async close(): Promise<void> {
    try {
      await this.adminCh?.deleteQueue(this.queue);
      await this.admin?.close();
    } finally {
      await this.manager?.close();
    }
  }
}

const require = createRequire(import.meta.url);

/** Installed versions of the toolkit and its amqplib (`?` if unknown). */
export function peerVersions(): Record<string, string> {
  const of = (name: string) => {
    try {
      return (JSON.parse(readFileSync(require.resolve(`${name}/package.json`), 'utf8')) as { version: string }).version;
    } catch {
      return '?';
    }
  };
  return { '@message-queue-toolkit/amqp': of('@message-queue-toolkit/amqp'), 'amqplib (@message-queue-toolkit/amqp)': of('amqplib') };
}
