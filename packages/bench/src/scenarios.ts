/**
 * The scenario runners. Each runs one impl once (one round) and returns its figure; the caller
 * alternates impls round by round so machine drift hits all of them alike.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Impl } from './impl.js';
import { type Payload, touch } from './payload.js';
import { percentiles } from './stats.js';

/** Window of a hand-batched publish and of prefill batches (Busbar's default `maxBatchSize`). */
export const BATCH = 500;

setFlagsFromString('--expose-gc');
const forceGc = runInNewContext('gc') as () => void;

/** A forced full GC, twice (finalizers of the first may free more). */
export function gc(): void {
  forceGc();
  forceGc();
}

/** Rejects after `ms` with `what` in the message. */
function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not finish within ${Math.round(ms / 1000)} s`)), ms);
    }),
  ]);
}

/**
 * Runs `body` with a consumer attached when `endToEnd` (in-memory targets, where a publish without
 * a consumer means nothing), and waits until all `n` were handled before the clock stops.
 */
async function maybeEndToEnd(impl: Impl, n: number, endToEnd: boolean, body: () => Promise<void>): Promise<number> {
  if (!endToEnd) {
    const t0 = performance.now();
    await body();
    await impl.flush?.();
    return n / ((performance.now() - t0) / 1000);
  }
  const consume = impl.consume?.bind(impl);
  if (!consume) throw new Error(`${impl.label} cannot consume`);
  let settled = 0;
  let allDone!: () => void;
  const done = new Promise<void>((r) => {
    allDone = r;
  });
  let sink = 0;
  const consumer = await consume(
    64,
    async (p) => {
      sink += touch(p);
    },
    () => {
      if (++settled === n) allDone();
    },
  );
  try {
    const t0 = performance.now();
    await body();
    await withTimeout(done, 60_000, `${impl.label} end-to-end (got ${settled}/${n})`);
    if (sink < 0) throw new Error('unreachable');
    return n / ((performance.now() - t0) / 1000);
  } finally {
    await consumer.stop();
  }
}

/** Scenario 1: `n` publishes, each awaited before the next. Returns msg/s. */
export async function publishSerial(impl: Impl, n: number, make: (seq: number) => Payload, endToEnd = false): Promise<number> {
  const publish = impl.publish?.bind(impl);
  if (!publish) throw new Error(`${impl.label} cannot publish one by one`);
  return maybeEndToEnd(impl, n, endToEnd, async () => {
    for (let i = 0; i < n; i++) await publish(make(i));
  });
}

/** Scenario 2 (naive): `workers` concurrent publishers, each awaiting its own publish, `n` in all. Returns msg/s. */
export async function publishConcurrent(
  impl: Impl,
  n: number,
  workers: number,
  make: (seq: number) => Payload,
  endToEnd = false,
): Promise<number> {
  const publish = impl.publish?.bind(impl);
  if (!publish) throw new Error(`${impl.label} cannot publish one by one`);
  let next = 0;
  return maybeEndToEnd(impl, n, endToEnd, () =>
    withTimeout(
      Promise.all(
        Array.from({ length: workers }, async () => {
          while (next < n) await publish(make(next++));
        }),
      ).then(() => {}),
      Math.max(60_000, n),
      `${impl.label} concurrent publish`,
    ),
  );
}

/**
 * Scenario 2 (hand-batched): windows of `window` messages (default {@link BATCH}), each awaited.
 * Scenario 2 uses a window of 100, the number of concurrent publishers. Returns msg/s.
 */
export async function publishBatched(
  impl: Impl,
  n: number,
  make: (seq: number) => Payload,
  endToEnd = false,
  window = BATCH,
): Promise<number> {
  const batch = impl.publishBatch?.bind(impl);
  if (!batch) throw new Error(`${impl.label} has no hand-batched publish`);
  return maybeEndToEnd(impl, n, endToEnd, async () => {
    for (let i = 0; i < n; i += window) {
      const ps: Payload[] = [];
      for (let j = i; j < Math.min(n, i + window); j++) ps.push(make(j));
      await batch(ps);
    }
  });
}

/** Publishes `n` messages the impl's fastest way (hand-batched if it has it, else 100 concurrent publishers). */
async function prefill(impl: Impl, n: number, make: (seq: number) => Payload): Promise<void> {
  if (impl.publishBatch) await publishBatched(impl, n, make);
  else await publishConcurrent(impl, n, 100, make);
}

/** Figures of one end-to-end consume round. */
export interface ConsumeRound {
  /** msg/s from gate open to the last acknowledgement. */
  readonly rate: number;
  /** Client CPU (user + system) µs per message while publishing (prefill). */
  readonly publishCpuUs: number;
  /** Client CPU µs per message while consuming. */
  readonly consumeCpuUs: number;
}

/**
 * Scenario 3 (and 5): a consumer with `concurrency` is started with its handler held at a gate;
 * `n` messages are published; the gate opens and the time until all `n` are handled and
 * acknowledged is measured, along with process CPU time.
 */
export async function consumeThroughput(impl: Impl, n: number, concurrency: number, make: (seq: number) => Payload): Promise<ConsumeRound> {
  const consume = impl.consume?.bind(impl);
  if (!consume) throw new Error(`${impl.label} cannot consume`);
  let open!: () => void;
  const gate = new Promise<void>((r) => {
    open = r;
  });
  let settled = 0;
  let sink = 0;
  let allDone!: () => void;
  const done = new Promise<void>((r) => {
    allDone = r;
  });
  const consumer = await consume(
    concurrency,
    async (p) => {
      await gate;
      sink += touch(p);
    },
    () => {
      if (++settled === n) allDone();
    },
  );
  try {
    const c0 = process.cpuUsage();
    await prefill(impl, n, make);
    const c1 = process.cpuUsage(c0);
    const t0 = performance.now();
    const c2 = process.cpuUsage();
    open();
    await withTimeout(done, Math.max(60_000, n * 2), `${impl.label} consuming ${n} (got ${settled})`);
    const secs = (performance.now() - t0) / 1000;
    const c3 = process.cpuUsage(c2);
    if (sink < 0) throw new Error('unreachable');
    return { rate: n / secs, publishCpuUs: (c1.user + c1.system) / n, consumeCpuUs: (c3.user + c3.system) / n };
  } finally {
    open();
    await consumer.stop();
  }
}

/** Latency percentiles of one open-loop round, ms. */
export interface LatencyRound {
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
  /** Messages actually sent per second (the schedule's rate if the client kept up). */
  readonly achievedRate: number;
}

/**
 * Scenario 4: open-loop load at `rate` msg/s for `seconds`: messages are sent on a schedule (every
 * millisecond, whatever is due), not after replies; latency is handler start minus the *scheduled*
 * send time (no coordinated omission). Busbar publishes each message on its own (auto-batched);
 * raw clients send what is due as one hand batch. The first 20 % are discarded as warm-up.
 */
export async function openLoopLatency(
  impl: Impl,
  rate: number,
  seconds: number,
  make: (seq: number, t: number) => Payload,
  useBatch: boolean,
): Promise<LatencyRound> {
  const consume = impl.consume?.bind(impl);
  if (!consume) throw new Error(`${impl.label} cannot consume`);
  const total = Math.round(rate * seconds);
  const lat = new Float64Array(total);
  let received = 0;
  let settled = 0;
  let allDone!: () => void;
  const done = new Promise<void>((r) => {
    allDone = r;
  });
  const consumer = await consume(
    64,
    async (p) => {
      const l = performance.now() - p.t;
      if (p.seq < total) lat[p.seq] = l;
      received++;
    },
    () => {
      if (++settled === total) allDone();
    },
  );
  let failures = 0;
  let firstError: unknown;
  const onError = (e: unknown) => {
    failures++;
    firstError ??= e;
  };
  try {
    const start = performance.now() + 5;
    const interval = 1000 / rate;
    let sent = 0;
    await new Promise<void>((resolve) => {
      const tick = () => {
        const due = Math.min(total, Math.floor((performance.now() - start) / interval) + 1);
        if (due > sent) {
          if (useBatch && impl.publishBatch) {
            const ps: Payload[] = [];
            for (; sent < due; sent++) ps.push(make(sent, start + sent * interval));
            impl.publishBatch(ps).catch(onError);
          } else {
            for (; sent < due; sent++) impl.publish?.(make(sent, start + sent * interval)).catch(onError);
          }
        }
        if (sent >= total) resolve();
        else setTimeout(tick, 1);
      };
      setTimeout(tick, 5);
    });
    const sendSecs = (performance.now() - start) / 1000;
    await withTimeout(done, 60_000 + seconds * 2000, `${impl.label} latency run (received ${received}/${total})`);
    if (failures > 0) throw new Error(`${failures} publishes failed: ${String(firstError)}`);
    const kept = lat.subarray(Math.floor(total * 0.2));
    const [p50, p95, p99] = percentiles(kept, [0.5, 0.95, 0.99]) as [number, number, number];
    return { p50, p95, p99, achievedRate: total / sendSecs };
  } finally {
    await consumer.stop();
  }
}

/** Heap figures of scenario 6. */
export interface MemoryRound {
  /** Heap bytes per in-flight message above the idle consumer, after a forced GC. */
  readonly perMessage: number;
  /** Messages actually in flight when measured (≤ N). */
  readonly inFlight: number;
}

/**
 * Scenario 6: a consumer with concurrency `n` whose handlers all block; `n` messages are
 * published and handed over; after a forced GC, heap used minus the idle consumer's heap, per
 * message in flight.
 */
export async function inFlightMemory(impl: Impl, n: number, make: (seq: number) => Payload): Promise<MemoryRound> {
  const consume = impl.consume?.bind(impl);
  if (!consume) throw new Error(`${impl.label} cannot consume`);
  let open!: () => void;
  const gate = new Promise<void>((r) => {
    open = r;
  });
  let running = 0;
  let allRunning!: () => void;
  const reached = new Promise<void>((r) => {
    allRunning = r;
  });
  let settled = 0;
  let allDone!: () => void;
  const done = new Promise<void>((r) => {
    allDone = r;
  });
  const consumer = await consume(
    n,
    async (p) => {
      if (++running === n) allRunning();
      await gate;
      touch(p);
    },
    () => {
      if (++settled === n) allDone();
    },
  );
  try {
    gc();
    const base = process.memoryUsage().heapUsed;
    await prefill(impl, n, make);
    // Some consumer loops cannot hold n at once (a Kafka loop holds one fetched batch per
    // partition): measure at whatever they hold once the count stops growing for 2 s.
    let last = -1;
    let stableSince = performance.now();
    const deadline = performance.now() + 60_000;
    while (running < n) {
      const settledNow = await Promise.race([reached.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 100))]);
      if (settledNow) break;
      if (running !== last) {
        last = running;
        stableSince = performance.now();
      } else if (running > 0 && performance.now() - stableSince > 2000) break;
      if (performance.now() > deadline) throw new Error(`${impl.label}: ${n} deliveries in flight: got ${running} in 60 s`);
    }
    const inFlight = running;
    gc();
    const held = process.memoryUsage().heapUsed;
    open();
    await withTimeout(done, 60_000, `${impl.label}: settling ${n} (got ${settled})`);
    return { perMessage: (held - base) / inFlight, inFlight };
  } finally {
    open();
    await consumer.stop();
  }
}
