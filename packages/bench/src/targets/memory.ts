/**
 * The in-memory target: Busbar's `MemoryTransport` against eventemitter3 with an awaited async
 * listener (payload by reference, and with a JSON round trip), and the peers Node `EventEmitter`
 * and `@node-ts/bus-core`'s in-memory queue.
 */
import { EventEmitter as NodeEmitter } from 'node:events';
import { decodeMessage, EventBus, encodeJson } from '@busbar/core';
import { encode } from '@busbar/core/transport';
import { MemoryTransport } from '@busbar/memory';
import { EventEmitter } from 'eventemitter3';
import { BenchEvent, BusbarImpl } from '../busbar.js';
import type { Consumer, Impl, Target } from '../impl.js';
import { otelInstrumentation } from '../otel.js';
import { type Payload, payloadFactory } from '../payload.js';
import { versionOf } from '../versions.js';

type Emitter = {
  emit(event: string, ...args: unknown[]): boolean;
  on(event: string, fn: (...args: never[]) => unknown): unknown;
  removeAllListeners(): unknown;
};

/**
 * A raw emitter "broker": publish emits and resolves when the async listener finished (the awaited
 * async listener of the targets). Consumers run with a semaphore of `concurrency`; publishes past it
 * queue like a prefetch.
 */
class EmitterImpl implements Impl {
  private emitter: Emitter | undefined;
  private handler: ((p: Payload) => Promise<void>) | undefined;
  private settledCb: (() => void) | undefined;
  private limit = Number.POSITIVE_INFINITY;
  private running = 0;
  private backlog: ({ msg: unknown; done: () => void } | undefined)[] = [];
  /** Index of the backlog's head: taking from the front is O(1) (`Array.shift` copies a long backlog). */
  private head = 0;

  constructor(
    readonly label: string,
    readonly description: string,
    private readonly make: () => Emitter,
    private readonly json: boolean,
  ) {}

  async open(): Promise<void> {
    this.emitter = this.make();
    this.emitter.on('m', (msg: unknown, done: () => void) => this.deliver(msg, done));
  }

  private deliver(msg: unknown, done: () => void): void {
    const handler = this.handler;
    if (!handler) {
      this.backlog.push({ msg, done });
      return;
    }
    if (this.running >= this.limit) {
      this.backlog.push({ msg, done });
      return;
    }
    this.running++;
    const p = this.json ? (JSON.parse(msg as string) as Payload) : (msg as Payload);
    handler(p).then(() => {
      this.running--;
      this.settledCb?.();
      done();
      const next = this.take();
      if (next) this.deliver(next.msg, next.done);
    });
  }

  private take(): { msg: unknown; done: () => void } | undefined {
    if (this.head >= this.backlog.length) return undefined;
    const next = this.backlog[this.head];
    this.backlog[this.head++] = undefined;
    if (this.head === this.backlog.length) {
      this.backlog = [];
      this.head = 0;
    } else if (this.head > 4096 && this.head * 2 > this.backlog.length) {
      this.backlog = this.backlog.slice(this.head);
      this.head = 0;
    }
    return next;
  }

  publish(p: Payload): Promise<void> {
    return new Promise((resolve) => {
      this.emitter?.emit('m', this.json ? JSON.stringify(p) : p, resolve);
    });
  }

  async publishBatch(ps: Payload[]): Promise<void> {
    // The raw emitter has no broker to hold messages: "durable" here means handed to the listener,
    // so a batch only waits for the last one to be taken, not handled.
    for (const p of ps) this.emitter?.emit('m', this.json ? JSON.stringify(p) : p, () => {});
  }

  async consume(concurrency: number, handler: (p: Payload) => Promise<void>, settled: () => void): Promise<Consumer> {
    this.handler = handler;
    this.settledCb = settled;
    this.limit = concurrency;
    while (this.running < this.limit && this.head < this.backlog.length) {
      const next = this.take();
      if (next) this.deliver(next.msg, next.done);
    }
    return {
      stop: async () => {
        this.handler = undefined;
        this.settledCb = undefined;
        this.limit = Number.POSITIVE_INFINITY;
      },
    };
  }

  async close(): Promise<void> {
    this.emitter?.removeAllListeners();
  }
}

interface NodeTsBus {
  initialize(): Promise<void>;
  start(): Promise<void>;
  publish(event: object): Promise<void>;
  dispose(): Promise<void>;
}
interface NodeTsModule {
  Bus: {
    configure(): {
      withHandler(h: {
        messageType: unknown;
        messageHandler: (m: { p: Payload }) => Promise<void>;
      }): ReturnType<NodeTsModule['Bus']['configure']>;
      withConcurrency(n: number): ReturnType<NodeTsModule['Bus']['configure']>;
      build(): NodeTsBus;
    };
  };
}

/** The @node-ts/bus-core message. */
class NodeTsMessage {
  static readonly NAME = 'busbar-bench/message';
  readonly $name = 'busbar-bench/message';
  readonly $version = 1;
  constructor(readonly p: Payload) {}
}

/**
 * @node-ts/bus-core with its default in-memory queue: one bus per consumer (its concurrency is set
 * at build time), `bus.publish` awaited, a function handler.
 */
class NodeTsImpl implements Impl {
  readonly label = '@node-ts/bus-core';
  readonly peer = true;
  readonly maxMessages = 2000;
  readonly description = '@node-ts/bus-core default in-memory queue, function handler, withConcurrency(concurrency)';
  private bus: NodeTsBus | undefined;
  private mod: NodeTsModule | undefined;

  async open(): Promise<void> {
    this.mod = (await import('@node-ts/bus-core')) as unknown as NodeTsModule;
  }

  async publish(p: Payload): Promise<void> {
    if (!this.bus) throw new Error('@node-ts/bus-core: publishes need a started bus (no consumer attached)');
    await this.bus.publish(new NodeTsMessage(p));
  }

  async consume(concurrency: number, handler: (p: Payload) => Promise<void>, settled: () => void): Promise<Consumer> {
    const mod = this.mod as NodeTsModule;
    const bus = mod.Bus.configure()
      .withHandler({
        messageType: NodeTsMessage,
        messageHandler: async (m) => {
          await handler(m.p);
          settled();
        },
      })
      .withConcurrency(concurrency)
      .build();
    await bus.initialize();
    await bus.start();
    this.bus = bus;
    return {
      stop: async () => {
        this.bus = undefined;
        await bus.dispose();
      },
    };
  }

  async close(): Promise<void> {
    await this.bus?.dispose();
  }
}

/** Builds the memory target. */
export function memoryTarget(runId: string, full: boolean): Target {
  return {
    name: 'memory',
    broker: 'in-process',
    inMemory: true,
    versions: { eventemitter3: versionOf('eventemitter3'), '@node-ts/bus-core': versionOf('@node-ts/bus-core') },
    counts: full
      ? { s1: 200_000, s2: 200_000, s3: 200_000, s4Seconds: 10, s6: 20_000 }
      : { s1: 30_000, s2: 30_000, s3: 30_000, s4Seconds: 2, s6: 5_000 },
    busbar: (bytes) =>
      new BusbarImpl({
        transport: () => new MemoryTransport(),
        namespace: `bench-${runId}-m${bytes}`,
        cleanup: async () => {},
        recycle: true,
        description: 'Busbar EventBus over MemoryTransport (zod validation + JSON encode/decode, the defaults)',
      }),
    raw: (instance) =>
      new EmitterImpl(
        instance === 1 ? 'raw' : 'raw-2',
        'eventemitter3, awaited async listener, payload by reference',
        () => new EventEmitter() as unknown as Emitter,
        false,
      ),
    peers: (bytes) => [
      // Busbar's own variant (kept with --no-peers): the same bus with @busbar/opentelemetry on the
      // SDK (batch span processor, dropping exporter, uncollected metric reader).
      new BusbarImpl({
        label: 'busbar-otel',
        transport: () => new MemoryTransport(),
        namespace: `bench-${runId}-o${bytes}`,
        cleanup: async () => {},
        recycle: true,
        instrument: otelInstrumentation(),
        description:
          'Busbar EventBus over MemoryTransport with @busbar/opentelemetry (OpenTelemetry SDK, spans to a dropping exporter, metrics aggregated)',
      }),
      new EmitterImpl(
        'raw+json',
        'eventemitter3, awaited async listener, JSON round trip',
        () => new EventEmitter() as unknown as Emitter,
        true,
      ),
      Object.assign(
        new EmitterImpl(
          'node-events',
          'node:events EventEmitter, awaited async listener, by reference',
          () => new NodeEmitter() as unknown as Emitter,
          false,
        ),
        { peer: true },
      ),
      new NodeTsImpl(),
    ],
    costs: async (bytes) => {
      const make = payloadFactory(bytes);
      const bus = new EventBus({ transport: new MemoryTransport(), namespace: `bench-${runId}-costs` });
      await bus.ready();
      const n = 20_000;
      const ps = Array.from({ length: n }, (_, i) => make(i));
      const limits = { maxPayloadBytes: 1 << 20, maxHeaderBytes: 1 << 16 };
      const time = (fn: (i: number) => unknown) => {
        for (let i = 0; i < 2000; i++) fn(i);
        const t0 = performance.now();
        for (let i = 0; i < n; i++) fn(i);
        return ((performance.now() - t0) * 1000) / n;
      };
      const encoded = ps.map((p) => encode(bus, BenchEvent, p));
      const bodies = ps.map((p) => encodeJson(p));
      const td = new TextDecoder();
      const out = {
        'JSON encode + decode (encodeJson, JSON.parse)': time((i) => JSON.parse(td.decode(encodeJson(ps[i])))),
        'zod validation, publish + consume (2 × safeParse)': time((i) => {
          BenchEvent.schema.safeParse(ps[i]);
          return BenchEvent.schema.safeParse(ps[i]);
        }),
        'bus.encode (zod + JSON + CloudEvents headers, id, time)': time((i) => encode(bus, BenchEvent, ps[i] as Payload)),
        'decodeMessage (limits, attributes, secure JSON parse, zod)': time((i) => decodeMessage(encoded[i] as never, BenchEvent, limits)),
        'raw JSON.parse of the body only': time((i) => JSON.parse(td.decode(bodies[i]))),
      };
      await bus.close();
      return out;
    },
    dispose: async () => {},
  };
}
