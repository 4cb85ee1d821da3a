/** RabbitMQ peers: rascal (same amqplib) and @message-queue-toolkit/amqp (needs amqplib 0.10: not measured). */
import { createRequire } from 'node:module';
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

/** The RabbitMQ peers, or why each is not measured. */
export function rabbitPeers(url: string, runId: string, queueType: string): (Impl | { label: string; skip: string })[] {
  return [
    new RascalImpl(url, runId, queueType),
    {
      label: 'RabbitMQ PerfTest (broker ceiling)',
      skip: 'com.rabbitmq:perf-test could not be resolved from Maven Central on this machine (tried 2.19.0–2.22.0); no ceiling figure for RabbitMQ',
    },
    {
      label: '@message-queue-toolkit/amqp',
      skip: 'its peer dependency is amqplib ^0.10.8 while Busbar and the raw baseline use amqplib 2.x; a fair run needs its own package with amqplib 0.10 — not done in this pass',
    },
  ];
}
