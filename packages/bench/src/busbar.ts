/** Busbar over any transport, as an {@link Impl}: `EventBus` with its defaults (validation, JSON, auto-batching). */
import { type DeliveryInfo, type DeliveryOutcome, defineEvent, EventBus, type Interceptors, type Transport } from '@busbar/core';
import { z } from 'zod';
import type { Consumer, Impl } from './impl.js';
import type { Payload } from './payload.js';

/** The benchmark event: the payload's shape, validated by zod on both sides (Busbar's default). */
export const BenchEvent = defineEvent({
  type: 'bench.message',
  version: 1,
  schema: z.object({ seq: z.number().int(), t: z.number(), pad: z.string() }),
});

/** Options of {@link BusbarImpl}. */
export interface BusbarImplOptions {
  /** Column label. @defaultValue 'busbar' */
  label?: string;
  /** Makes a fresh transport (one per bus). */
  transport: () => Transport;
  /** Run-unique namespace: every broker object the transport creates carries it. */
  namespace: string;
  /** Deletes the broker objects of `namespace` after the bus closed (`transport`: the one the bus used). */
  cleanup: (namespace: string, transport: Transport | undefined) => Promise<void>;
  /** What it is, for the README. */
  description?: string;
  /** Replace the bus and transport before every round (see {@link Impl.recycle}). @defaultValue false */
  recycle?: boolean;
  /** Interceptors for every bus, and what to attach to it (the `busbar-otel` subject). @defaultValue none */
  instrument?: Instrumentation;
}

/** What {@link BusbarImplOptions.instrument} gives each bus (e.g. `@busbar/opentelemetry`'s `busbarTelemetry()`). */
export interface Instrumentation {
  readonly interceptors: Interceptors;
  attach(bus: EventBus): () => void;
}

/** Busbar's EventBus over a transport. */
export class BusbarImpl implements Impl {
  readonly label: string;
  readonly description: string;
  private bus: EventBus | undefined;
  private transport: Transport | undefined;
  private detach: (() => void) | undefined;

  constructor(private readonly options: BusbarImplOptions) {
    this.label = options.label ?? 'busbar';
    this.description = options.description ?? 'Busbar EventBus, defaults (zod validation, JSON, CloudEvents headers, auto-batching)';
  }

  /** The bus, once open. */
  get eventBus(): EventBus {
    if (!this.bus) throw new Error('not open');
    return this.bus;
  }

  async open(): Promise<void> {
    this.transport = this.options.transport();
    const instrument = this.options.instrument;
    this.bus = new EventBus({
      transport: this.transport,
      namespace: this.options.namespace,
      source: 'urn:busbar:bench',
      ...(instrument ? { interceptors: instrument.interceptors } : {}),
    });
    this.detach = instrument?.attach(this.bus);
    await this.bus.ready();
  }

  /**
   * Creates a `sink` group (subscribe, then close the subscription): its durable queue/stream
   * group keeps what the publish-only scenarios send, so they publish to a routed destination as an
   * application would; it is never read and is deleted with the run's objects.
   */
  async preparePublishOnly(): Promise<void> {
    const sub = await this.eventBus.subscribe(BenchEvent, { group: 'sink', concurrency: 1 }, async () => {});
    await sub.close();
  }

  async publish(p: Payload): Promise<void> {
    await (this.bus as EventBus).publish(BenchEvent, p);
  }

  async consume(concurrency: number, handler: (p: Payload) => Promise<void>, settled: () => void): Promise<Consumer> {
    const bus = this.eventBus;
    const onOutcome = (_info: DeliveryInfo, outcome: DeliveryOutcome) => {
      if (outcome.status === 'acked') settled();
      else if (outcome.status !== 'duplicate') process.stderr.write(`\nbusbar outcome ${outcome.status}: ${JSON.stringify(outcome)}\n`);
    };
    bus.on('outcome', onOutcome);
    const sub = await bus.subscribe(BenchEvent, { group: 'bench', concurrency }, handler);
    return {
      stop: async () => {
        await sub.close();
        bus.off('outcome', onOutcome);
      },
    };
  }

  async recycle(): Promise<void> {
    if (!this.options.recycle) return;
    await this.close();
    await this.open();
  }

  async close(): Promise<void> {
    try {
      this.detach?.();
      await this.bus?.close();
    } finally {
      await this.options.cleanup(this.options.namespace, this.transport);
    }
  }
}
