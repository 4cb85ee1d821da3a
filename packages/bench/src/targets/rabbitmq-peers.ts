/**
 * RabbitMQ peers: rascal (same amqplib 2.x) and @message-queue-toolkit/amqp (amqplib 0.10, from its
 * own workspace package `@busbar/bench-peer-mqt`).
 */
import { createRequire } from 'node:module';
import type { MqtPeer } from '@busbar/bench-peer-mqt';
import type { Consumer, Impl } from '../impl.js';
import type { Payload } from '../payload.js';

const require = createRequire(import.meta.url);

interface Publication {
  on(event: 'success', fn: () => void): Publication;
  on(event: 'error' | 'return', fn: (e: unknown) => void): Publication;
}
interface Subscription {
  on(event: 'message', fn: (message: unknown, content: Payload, ackOrNack: () => void) => void): Subscription;
  on(event: 'error' | 'invalid_content', fn: (e: unknown) => void): Subscription;
  cancel(): Promise<void>;
}
interface RascalBroker {
  publish(name: string, content: unknown): Promise<Publication>;
  subscribe(name: string, overrides?: { prefetch?: number }): Promise<Subscription>;
  purge(): Promise<void>;
  nuke(): Promise<void>;
  shutdown(): Promise<void>;
  on(event: 'error', fn: (e: unknown) => void): void;
}
interface Rascal {
  BrokerAsPromised: { create(config: unknown): Promise<RascalBroker> };
  withDefaultConfig(config: unknown): unknown;
}

/**
 * rascal over the same amqplib: a publication with confirms and persistent messages (its
 * defaults), JSON content; a subscription with prefetch = concurrency, acked after the handler.
 */
class RascalImpl implements Impl {
  readonly label = 'rascal';
  readonly peer = true;
  readonly description = 'rascal BrokerAsPromised: publication with confirm + persistent (defaults), subscription prefetch = concurrency';
  private broker: RascalBroker | undefined;
  private readonly queue: string;

  constructor(
    private readonly url: string,
    runId: string,
    private readonly queueType: string,
  ) {
    this.queue = `bench-${runId}.rascal`;
  }

  async open(): Promise<void> {
    const rascal = require('rascal') as Rascal;
    const config = {
      vhosts: {
        '/': {
          connection: { url: this.url },
          queues: { [this.queue]: { options: { durable: true, arguments: { 'x-queue-type': this.queueType } } } },
          publications: { p: { queue: this.queue, confirm: true, options: { persistent: true } } },
          subscriptions: { s: { queue: this.queue, prefetch: 64 } },
        },
      },
    };
    this.broker = await rascal.BrokerAsPromised.create(rascal.withDefaultConfig(config));
    this.broker.on('error', () => {});
  }

  async publish(p: Payload): Promise<void> {
    const pub = await (this.broker as RascalBroker).publish('p', p);
    await new Promise<void>((resolve, reject) => {
      pub
        .on('success', () => resolve())
        .on('error', reject)
        .on('return', reject);
    });
  }

  async consume(concurrency: number, handler: (p: Payload) => Promise<void>, settled: () => void): Promise<Consumer> {
    const broker = this.broker as RascalBroker;
    await broker.purge(); // messages of the publish-only scenarios
    const sub = await broker.subscribe('s', { prefetch: concurrency });
    sub
      .on('message', (_m, content, ack) => {
        handler(content).then(() => {
          ack();
          settled();
        });
      })
      .on('error', () => {})
      .on('invalid_content', () => {});
    return { stop: () => sub.cancel() };
  }

  async close(): Promise<void> {
    await this.broker?.nuke();
  }
}

/**
 * @message-queue-toolkit/amqp (its own package, amqplib 0.10): a queue publisher and a queue consumer
 * with a zod schema on both sides, persistent messages, the same queue type. It has no publisher
 * confirms — `publish()` returns once the message is written to the channel — so a publish run's
 * clock stops when the broker holds all of it ({@link Impl.flush}); and no prefetch option, so the
 * bench sets prefetch = concurrency on its consumer channel (see packages/bench-peer-mqt).
 */
class MqtImpl implements Impl {
  readonly label = '@message-queue-toolkit/amqp';
  readonly peer = true;
  readonly description =
    '@message-queue-toolkit/amqp queue publisher (persistent, no confirms: fire-and-forget) and queue consumer (prefetch = concurrency), zod on both sides, amqplib 0.10';
  readonly caveat =
    'no publisher confirms (its publish() is fire-and-forget): publish figures stop the clock when the queue holds every message (polled), but a publisher never learns of a loss; s1 is not one round trip per message';
  private peerImpl: MqtPeer | undefined;

  constructor(
    private readonly url: string,
    private readonly queue: string,
    private readonly queueType: string,
  ) {}

  async open(): Promise<void> {
    const { MqtPeer } = await import('@busbar/bench-peer-mqt');
    this.peerImpl = new MqtPeer(this.url, this.queue, this.queueType);
    await this.peerImpl.open();
  }

  async publish(p: Payload): Promise<void> {
    (this.peerImpl as MqtPeer).publish(p);
  }

  flush(): Promise<void> {
    return (this.peerImpl as MqtPeer).flush();
  }

  consume(concurrency: number, handler: (p: Payload) => Promise<void>, settled: () => void): Promise<Consumer> {
    return (this.peerImpl as MqtPeer).consume(concurrency, handler, settled);
  }

  async close(): Promise<void> {
    await this.peerImpl?.close();
  }
}

/** The RabbitMQ peers, or why each is not measured. */
export function rabbitPeers(url: string, runId: string, queueType: string): (Impl | { label: string; skip: string })[] {
  return [new RascalImpl(url, runId, queueType), new MqtImpl(url, `bench-${runId}.mqt`, queueType)];
}

/** Versions of the peers' libraries that this package does not resolve itself. */
export async function rabbitPeerVersions(): Promise<Record<string, string>> {
  try {
    return (await import('@busbar/bench-peer-mqt')).peerVersions();
  } catch {
    return { '@message-queue-toolkit/amqp': '?' };
  }
}
