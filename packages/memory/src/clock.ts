import type { Clock } from '@busbar/core';

interface Timer {
  readonly due: number;
  readonly seq: number;
  readonly fn: () => void;
}

/**
 * A {@link Clock} that only moves when told to, so retry delays need no real waiting in unit
 * tests. Timers fire in due order (ties in the order they were set), synchronously inside
 * {@link ManualClock.advance} / {@link ManualClock.runAll}; a timer set by a firing timer fires in
 * the same call if it falls due within it.
 *
 * ```ts
 * const clock = new ManualClock();
 * const transport = new MemoryTransport({ clock });
 * // … a handler fails, core schedules a retry in 200 ms …
 * clock.advance(200); // the message is due again and gets redelivered
 * ```
 */
export class ManualClock implements Clock {
  private current: number;
  private seq = 0;
  private readonly timers = new Set<Timer>();

  /** @param startMs - the initial value of {@link ManualClock.now}. @defaultValue 0 */
  constructor(startMs = 0) {
    this.current = startMs;
  }

  /** The current (manual) time, epoch ms. */
  now(): number {
    return this.current;
  }

  /** Schedules `fn` at `now() + ms`; returns a function that cancels it. */
  setTimer(fn: () => void, ms: number): () => void {
    const timer: Timer = { due: this.current + Math.max(0, ms), seq: this.seq++, fn };
    this.timers.add(timer);
    return () => {
      this.timers.delete(timer);
    };
  }

  /** Timers set and neither fired nor cancelled yet. */
  get pendingTimers(): number {
    return this.timers.size;
  }

  /** Moves time forward by `ms`, firing every timer that falls due on the way. Returns how many fired. */
  advance(ms: number): number {
    if (!(ms >= 0)) throw new RangeError(`ManualClock.advance needs ms >= 0, got ${ms}`);
    const target = this.current + ms;
    let fired = 0;
    for (let next = this.earliest(); next && next.due <= target; next = this.earliest()) {
      this.fire(next);
      fired++;
    }
    this.current = target;
    return fired;
  }

  /**
   * Fires every pending timer (and those they set) in due order, moving time to each one's due time.
   * Returns how many fired. @throws Error after `limit` timers (a timer that keeps re-arming itself).
   */
  runAll(limit = 100_000): number {
    let fired = 0;
    for (let next = this.earliest(); next; next = this.earliest()) {
      if (fired >= limit) throw new Error(`ManualClock.runAll fired ${limit} timers and more are pending`);
      this.fire(next);
      fired++;
    }
    return fired;
  }

  private fire(timer: Timer): void {
    this.timers.delete(timer);
    this.current = Math.max(this.current, timer.due);
    timer.fn();
  }

  private earliest(): Timer | undefined {
    let best: Timer | undefined;
    for (const t of this.timers) {
      if (!best || t.due < best.due || (t.due === best.due && t.seq < best.seq)) best = t;
    }
    return best;
  }
}
