/**
 * The resilience patterns Busbar is built on, exported for application code too: a timeout on
 * every remote call, retries only for what is idempotent (exponential backoff, full jitter, cap),
 * a circuit breaker, and parallel fan-out that waits for every branch.
 */
import { BusError, CircuitOpenError, TimeoutError } from './errors.js';

/** Time source; inject a fake in tests. */
export interface Clock {
  /** Epoch milliseconds. */
  now(): number;
  /** Like `setTimeout`; returns a cancel function. */
  setTimer(fn: () => void, ms: number): () => void;
}

/** The real clock. Timers are `unref`'d so they never keep a process alive on their own. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimer(fn, ms) {
    const t = setTimeout(fn, Math.max(0, ms));
    t.unref?.();
    return () => clearTimeout(t);
  },
};

/** A `[0, 1)` random source; inject a seeded one for reproducible jitter. */
export type RandomSource = () => number;

/** A small seeded PRNG (mulberry32), for tests and reproducible jitter. */
export function seededRandom(seed: number): RandomSource {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Exponential backoff with jitter. */
export interface BackoffOptions {
  /** Delay scale of the first retry, ms. @defaultValue 200 */
  initialMs?: number;
  /** Growth factor per attempt. @defaultValue 2 */
  multiplier?: number;
  /** Upper bound of any delay, ms. @defaultValue 30000 */
  maxMs?: number;
  /** Lower bound of any delay, ms (keeps full jitter from retrying instantly). @defaultValue 10 */
  minMs?: number;
  /**
   * `'full'`: uniform in [minMs, cap] (AWS "full jitter"); `'none'`: exactly the cap.
   * @defaultValue 'full'
   */
  jitter?: 'full' | 'none';
}

/**
 * Delay before retry number `retry` (1 = the first retry): `min(maxMs, initialMs × multiplier^(retry-1))`,
 * jittered uniformly down to `minMs` when `jitter` is `'full'`.
 */
export function backoffDelay(retry: number, options: BackoffOptions = {}, random: RandomSource = Math.random): number {
  const initial = options.initialMs ?? 200;
  const multiplier = options.multiplier ?? 2;
  const max = options.maxMs ?? 30_000;
  const min = Math.min(options.minMs ?? 10, max);
  const cap = Math.min(max, initial * multiplier ** Math.max(0, retry - 1));
  if ((options.jitter ?? 'full') === 'none') return Math.max(min, Math.round(cap));
  return Math.max(min, Math.round(min + random() * Math.max(0, cap - min)));
}

/** Options of {@link withTimeout}. */
export interface TimeoutOptions {
  /** Milliseconds before the call is abandoned. */
  ms: number;
  /** Used in the error message. @defaultValue 'operation' */
  label?: string;
  /** Aborting this signal rejects at once. */
  signal?: AbortSignal;
  /** Build the timeout error (default {@link TimeoutError}). */
  onTimeout?: () => Error;
}

/**
 * Runs `fn` with a deadline. `fn` receives an `AbortSignal` that fires on timeout, so the
 * underlying call can stop; the returned promise rejects with {@link TimeoutError} (or
 * `onTimeout()`) when the deadline passes, whatever `fn` does.
 */
export function withTimeout<T>(fn: (signal: AbortSignal) => Promise<T>, options: TimeoutOptions): Promise<T> {
  const controller = new AbortController();
  const label = options.label ?? 'operation';
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      cleanup();
      controller.abort(options.signal?.reason);
      reject(options.signal?.reason ?? new TimeoutError(`${label} aborted`));
    };
    const timer = setTimeout(() => {
      cleanup();
      const err = options.onTimeout?.() ?? new TimeoutError(`${label} timed out after ${options.ms} ms`);
      controller.abort(err);
      reject(err);
    }, options.ms);
    const cleanup = () => {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
    };
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    fn(controller.signal).then(
      (v) => {
        cleanup();
        resolve(v);
      },
      (e: unknown) => {
        cleanup();
        reject(e);
      },
    );
  });
}

/** Options of {@link retry}. */
export interface RetryOptions extends BackoffOptions {
  /**
   * Must be `true`: retrying repeats the call, which is only safe when repeating it has the same
   * effect as doing it once. {@link retry} refuses to run otherwise.
   */
  idempotent: boolean;
  /** Total attempts including the first. @defaultValue 3 */
  maxAttempts?: number;
  /** Whether an error is worth retrying. Default: `BusError.retryable`, else `true`. */
  shouldRetry?: (error: unknown, attempt: number) => boolean;
  /** Called before each wait. */
  onRetry?: (error: unknown, attempt: number, delayMs: number) => void;
  /** Random source for jitter. @defaultValue Math.random */
  random?: RandomSource;
  /** Abort waiting and give up. */
  signal?: AbortSignal;
}

/**
 * Calls `fn` until it succeeds, retrying retryable failures after exponential backoff with full
 * jitter. Refuses (throws `TypeError`) unless the caller declares the call idempotent.
 */
export async function retry<T>(fn: (attempt: number) => Promise<T>, options: RetryOptions): Promise<T> {
  if (options.idempotent !== true) {
    throw new TypeError('retry() refuses a call not declared idempotent: pass { idempotent: true } only if repeating it is safe');
  }
  const maxAttempts = options.maxAttempts ?? 3;
  const shouldRetry = options.shouldRetry ?? ((e: unknown) => (e instanceof BusError ? e.retryable : true));
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (error) {
      if (attempt >= maxAttempts || !shouldRetry(error, attempt) || options.signal?.aborted) throw error;
      const delay = backoffDelay(attempt, options, options.random);
      options.onRetry?.(error, attempt, delay);
      await sleep(delay, options.signal);
    }
  }
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Breaker state. */
export type BreakerState = 'closed' | 'open' | 'half-open';

/** Options of {@link CircuitBreaker}. */
export interface CircuitBreakerOptions {
  /** Consecutive failures that open the breaker. @defaultValue 5 */
  failureThreshold?: number;
  /** How long it stays open before letting one trial call through, ms. @defaultValue 5000 */
  recoveryTimeoutMs?: number;
  /** Which errors count as failures. Default: every error except non-retryable `BusError`s. */
  isFailure?: (error: unknown) => boolean;
  /** Time source. @defaultValue systemClock */
  clock?: Clock;
  /** Called on every state change. */
  onStateChange?: (state: BreakerState) => void;
  /** Name used in error messages. @defaultValue 'broker' */
  name?: string;
}

/**
 * Closed → (N consecutive failures) → open: calls fail fast with {@link CircuitOpenError} →
 * (recovery timeout) → half-open: one trial call; success closes, failure re-opens.
 */
export class CircuitBreaker {
  private failures = 0;
  private openedAt = 0;
  private trialInFlight = false;
  private current: BreakerState = 'closed';
  private readonly threshold: number;
  private readonly recoveryMs: number;
  private readonly clock: Clock;

  constructor(private readonly options: CircuitBreakerOptions = {}) {
    this.threshold = options.failureThreshold ?? 5;
    this.recoveryMs = options.recoveryTimeoutMs ?? 5000;
    this.clock = options.clock ?? systemClock;
  }

  /** Current state (an open breaker past its recovery timeout reports `half-open`). */
  get state(): BreakerState {
    if (this.current === 'open' && this.clock.now() - this.openedAt >= this.recoveryMs) return 'half-open';
    return this.current;
  }

  /** Runs `fn` through the breaker. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    this.admit();
    try {
      const value = await fn();
      this.onSuccess();
      return value;
    } catch (error) {
      this.onFailure(error);
      throw error;
    }
  }

  /**
   * Throws {@link CircuitOpenError} while the breaker is open (before its recovery timeout), without
   * taking the half-open trial slot. For a cheap fail-fast check ahead of queued work.
   */
  assertNotOpen(): void {
    if (this.state === 'open') {
      const retryAt = this.openedAt + this.recoveryMs;
      throw new CircuitOpenError(
        `circuit to ${this.options.name ?? 'broker'} is open; next trial at ${new Date(retryAt).toISOString()}`,
        retryAt,
      );
    }
  }

  /** Throws {@link CircuitOpenError} if a call may not pass now; otherwise admits it. */
  admit(): void {
    const state = this.state;
    if (state === 'closed') return;
    if (state === 'half-open' && !this.trialInFlight) {
      this.trialInFlight = true;
      this.setState('half-open');
      return;
    }
    const retryAt = this.openedAt + this.recoveryMs;
    throw new CircuitOpenError(
      `circuit to ${this.options.name ?? 'broker'} is open; next trial at ${new Date(retryAt).toISOString()}`,
      retryAt,
    );
  }

  /** Records a success of an admitted call. */
  onSuccess(): void {
    this.failures = 0;
    this.trialInFlight = false;
    if (this.current !== 'closed') this.setState('closed');
  }

  /** Records a failure of an admitted call. */
  onFailure(error: unknown): void {
    const counts = this.options.isFailure?.(error) ?? !(error instanceof BusError && !error.retryable);
    if (!counts) {
      this.onSuccess();
      return;
    }
    this.failures++;
    const wasTrial = this.trialInFlight;
    this.trialInFlight = false;
    if (wasTrial || this.failures >= this.threshold) {
      this.openedAt = this.clock.now();
      this.setState('open');
    }
  }

  private setState(state: BreakerState): void {
    if (state === this.current) return;
    this.current = state;
    this.options.onStateChange?.(state);
  }
}

/** Result of one branch of {@link settleAll}. */
export type Settled<T> = { status: 'fulfilled'; value: T } | { status: 'rejected'; reason: unknown };

/**
 * Parallel fan-out: starts every task at once and waits for all of them (`Promise.allSettled`
 * semantics), optionally bounding concurrency. One failure never hides the others' results.
 */
export async function settleAll<T>(tasks: readonly (() => Promise<T>)[], options: { concurrency?: number } = {}): Promise<Settled<T>[]> {
  const results: Settled<T>[] = new Array(tasks.length);
  const limit = Math.max(1, options.concurrency ?? tasks.length);
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) {
      const i = next++;
      try {
        results[i] = { status: 'fulfilled', value: await (tasks[i] as () => Promise<T>)() };
      } catch (reason) {
        results[i] = { status: 'rejected', reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  return results;
}
