import type { Payload } from './payload.js';

/** A running consumer of an {@link Impl}. */
export interface Consumer {
  /** Stops intake and closes the consumer (in-flight handlers are allowed to finish). */
  stop(): Promise<void>;
}

/**
 * One thing being measured on one broker: Busbar over a transport, a hand-written baseline on the
 * raw client, or a peer library. Every impl owns run-unique broker objects created in `open` and
 * deleted in `close`.
 */
export interface Impl {
  /** Column label: `busbar`, `raw`, `raw-2`, `raw-batched`, or a peer's name. */
  readonly label: string;
  /** What it is, for the README (client, durability). */
  readonly description: string;
  /** A peer library (Busbar's target against it is ≥ 1.0× in every scenario it can run). */
  readonly peer?: boolean;
  /**
   * Why its figures are not like-for-like with Busbar's (weaker durability, a different model):
   * printed under the transport's table and kept in the JSON `caveats`.
   */
  readonly caveat?: string;
  /** Cap on messages per throughput round for a slow subject (its figure is a rate, so a smaller count stays comparable). */
  readonly maxMessages?: number;
  /** Creates connections and run-unique broker objects. */
  open(): Promise<void>;
  /**
   * Called once before the publish-only scenarios: makes sure published messages are routed and
   * kept somewhere (Busbar on RabbitMQ refuses unroutable publishes: a group must exist), without
   * consuming them.
   */
  preparePublishOnly?(): Promise<void>;
  /** One durable publish, resolved when the broker confirmed it. */
  publish?(p: Payload): Promise<void>;
  /** A hand-batched durable publish of all of `ps` (confirm window, pipeline, sendBatch). */
  publishBatch?(ps: Payload[]): Promise<void>;
  /**
   * For a subject whose `publish` resolves before the broker has the message (a library without
   * publisher confirms): resolves once the broker holds everything published so far. Awaited
   * inside the clock at the end of every publish run (s1, s2, the prefills of s3/s5/s6), so the
   * figure is the broker's intake, not the speed of a loop filling a socket buffer.
   */
  flush?(): Promise<void>;
  /**
   * Starts consuming with at most `concurrency` unacknowledged deliveries; runs `handler` for each
   * and calls `settled()` after the message was acknowledged.
   */
  consume?(concurrency: number, handler: (p: Payload) => Promise<void>, settled: () => void): Promise<Consumer>;
  /**
   * Called before every round, untimed: starts over with fresh state where an impl accumulates it
   * (the in-memory broker keeps every message it was given).
   */
  recycle?(): Promise<void>;
  /** Closes connections and deletes what `open` created. */
  close(): Promise<void>;
}

/** A transport's benchmark target: its impls and how many messages each scenario uses. */
export interface Target {
  /** `memory`, `rabbitmq`, `redis-streams`, `kafka`. */
  readonly name: string;
  /** Where the broker came from (credential-free). */
  readonly broker: string;
  /** Versions of clients and the broker. */
  readonly versions: Record<string, string>;
  /** Message counts per scenario. */
  readonly counts: ScenarioCounts;
  /**
   * In-memory: publishes are measured end to end (a consumer attached, clock stops when all were
   * handled), and scenario 1 is judged as µs of overhead per message rather than a ratio.
   */
  readonly inMemory?: boolean;
  /** Builds Busbar's impl (undefined: transport not available yet, with reason). */
  busbar(payloadBytes: number): Impl | { skip: string };
  /** The raw baseline; `instance` tells apart the two raw runs of the noise band. */
  raw(instance: number, payloadBytes: number): Impl;
  /** Peers: impl or a reason it could not be set up fairly. */
  peers(payloadBytes: number): (Impl | { label: string; skip: string })[];
  /** Per-message costs of Busbar's pieces (µs), measured once per round (in-memory target). */
  costs?(payloadBytes: number): Promise<Record<string, number>>;
  /** The broker's own benchmark tool, if available (`undefined`: not available). */
  ceiling?(runId: string): Promise<Ceiling | undefined>;
  /** Releases what the target itself started (a container). */
  dispose(): Promise<void>;
}

/** Message counts of one round, per scenario. */
export interface ScenarioCounts {
  s1: number;
  s2: number;
  s3: number;
  /** Seconds of open-loop load in scenario 4. */
  s4Seconds: number;
  /** Messages in flight at N (and 2N) in scenario 6. */
  s6: number;
}

/** A figure from the broker's own benchmark tool. */
export interface Ceiling {
  /** The tool, e.g. `redis-benchmark`. */
  readonly tool: string;
  /** What it measured (command, pipelining, payload). */
  readonly what: string;
  readonly msgPerSec: number;
  /** The Busbar row compared with it (`s2`: publish with 100 concurrent publishers). */
  readonly busbarScenario: string;
}

/** Exposes only the publishing side of `impl` under another label (a publish-only diagnostic subject). */
export function publishOnly(label: string, description: string, impl: Impl): Impl {
  return {
    label,
    description,
    open: () => impl.open(),
    ...(impl.maxMessages !== undefined ? { maxMessages: impl.maxMessages } : {}),
    ...(impl.publish ? { publish: impl.publish.bind(impl) } : {}),
    ...(impl.publishBatch ? { publishBatch: impl.publishBatch.bind(impl) } : {}),
    ...(impl.flush ? { flush: impl.flush.bind(impl) } : {}),
    close: () => impl.close(),
  };
}
