import type { Clock } from './resilience.js';
import { systemClock } from './resilience.js';

/** Result of {@link IdempotencyStore.claim}. */
export type ClaimResult =
  /** Nobody completed or holds this key: run the handler, then `complete` or `release` with `token`. */
  | { readonly status: 'acquired'; readonly token: string }
  /** The key completed for this scope: acknowledge without running the handler. */
  | { readonly status: 'completed' }
  /** Another delivery holds the key right now: try again later. */
  | { readonly status: 'in-progress' };

/**
 * Records which (scope, idempotency key) pairs have been handled. Busbar's scope is the consumer
 * group and event, so each group applies each key once.
 *
 * Protocol per delivery: `claim` → run handler → `complete` (success) or `release` (failure).
 * A claim is a lease: if the process dies, it expires after `leaseMs` and another delivery can
 * claim the key.
 *
 * **The crash window.** A handler effect that lives elsewhere (an HTTP call, another database)
 * commits separately from `complete`; a crash between the two re-runs the handler on redelivery.
 * An effect that lives *in the store itself* can commit atomically with the completion mark:
 * pass it to `complete` as a transaction step (see `HandlerContext.commitWithCompletion`), and it
 * happens exactly once.
 *
 * @typeParam TTx - what an atomic effect receives: the store's transaction (e.g. a Redis MULTI).
 */
export interface IdempotencyStore<TTx = unknown> {
  /** Try to take the key for `leaseMs`. */
  claim(scope: string, key: string, leaseMs: number): Promise<ClaimResult>;
  /**
   * Mark the key completed for `ttlMs` (a duplicate arriving later than that runs again), running
   * `effects` atomically with the mark. Rejects if the lease was lost (`token` no longer holds it)
   * and nothing is applied then.
   */
  complete(scope: string, key: string, token: string, ttlMs: number, effects: readonly ((tx: TTx) => void)[]): Promise<void>;
  /** Give the key up after a failed attempt, so a retry may claim it. */
  release(scope: string, key: string, token: string): Promise<void>;
  /** Extend a held lease. */
  extend?(scope: string, key: string, token: string, leaseMs: number): Promise<void>;
}

/** Error thrown by `complete` when the lease expired and another holder took over. */
export class LeaseLostError extends Error {
  constructor(scope: string, key: string) {
    super(`idempotency lease lost for ${scope} / ${key}`);
    this.name = 'LeaseLostError';
  }
}

interface Entry {
  state: 'in-progress' | 'completed';
  token: string;
  expiresAt: number;
}

/** Options of {@link MemoryIdempotencyStore}. */
export interface MemoryIdempotencyStoreOptions {
  /** Time source. @defaultValue systemClock */
  clock?: Clock;
  /** Maximum entries kept; the oldest are evicted beyond it. @defaultValue 100000 */
  maxEntries?: number;
}

/**
 * In-process {@link IdempotencyStore}. **Not distributed**: it only deduplicates within one
 * process, so use it for tests and single-instance services; use the Redis store otherwise.
 * Atomic effects are plain functions (`tx` is `undefined`) run synchronously with the mark.
 */
export class MemoryIdempotencyStore implements IdempotencyStore<undefined> {
  private readonly entries = new Map<string, Entry>();
  private readonly clock: Clock;
  private readonly maxEntries: number;
  private seq = 0;

  constructor(options: MemoryIdempotencyStoreOptions = {}) {
    this.clock = options.clock ?? systemClock;
    this.maxEntries = options.maxEntries ?? 100_000;
  }

  async claim(scope: string, key: string, leaseMs: number): Promise<ClaimResult> {
    const id = `${scope}\u0000${key}`;
    const now = this.clock.now();
    const existing = this.entries.get(id);
    if (existing && existing.expiresAt > now) {
      return existing.state === 'completed' ? { status: 'completed' } : { status: 'in-progress' };
    }
    const token = `t${++this.seq}`;
    this.entries.delete(id);
    this.entries.set(id, { state: 'in-progress', token, expiresAt: now + leaseMs });
    this.evict();
    return { status: 'acquired', token };
  }

  async complete(scope: string, key: string, token: string, ttlMs: number, effects: readonly ((tx: undefined) => void)[]): Promise<void> {
    const id = `${scope}\u0000${key}`;
    const entry = this.entries.get(id);
    if (!entry || entry.token !== token || entry.state !== 'in-progress') throw new LeaseLostError(scope, key);
    for (const effect of effects) effect(undefined);
    entry.state = 'completed';
    entry.expiresAt = this.clock.now() + ttlMs;
  }

  async release(scope: string, key: string, token: string): Promise<void> {
    const id = `${scope}\u0000${key}`;
    const entry = this.entries.get(id);
    if (entry && entry.token === token && entry.state === 'in-progress') this.entries.delete(id);
  }

  async extend(scope: string, key: string, token: string, leaseMs: number): Promise<void> {
    const entry = this.entries.get(`${scope}\u0000${key}`);
    if (!entry || entry.token !== token) throw new LeaseLostError(scope, key);
    entry.expiresAt = this.clock.now() + leaseMs;
  }

  /** Number of entries held (expired ones included until evicted). */
  get size(): number {
    return this.entries.size;
  }

  private evict(): void {
    while (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next();
      if (oldest.done) return;
      this.entries.delete(oldest.value);
    }
  }
}
