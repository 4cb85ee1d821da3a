import type { EventBus } from './bus.js';
import type { DeliveryInfo, DeliveryOutcome } from './bus-events.js';
import { TimeoutError } from './errors.js';

/** One outcome recorded by {@link OutcomeSpy}. */
export interface RecordedOutcome {
  readonly info: DeliveryInfo;
  readonly outcome: DeliveryOutcome;
}

type Predicate = (r: RecordedOutcome) => boolean;

/**
 * Records every delivery outcome of a bus and lets tests **await** one by id (or any predicate)
 * with a timeout, instead of sleeping. Call `dispose()` when done.
 *
 * ```ts
 * const spy = new OutcomeSpy(bus);
 * const { id } = await bus.publish(UserCreated, data);
 * await spy.waitFor(id, { status: 'acked' });
 * ```
 */
export class OutcomeSpy {
  /** Every outcome seen, in order. */
  readonly outcomes: RecordedOutcome[] = [];
  private readonly waiters = new Set<{ match: Predicate; resolve: (r: RecordedOutcome) => void }>();
  private readonly listener = (info: DeliveryInfo, outcome: DeliveryOutcome) => {
    const r = { info, outcome };
    this.outcomes.push(r);
    for (const w of this.waiters) {
      if (w.match(r)) {
        this.waiters.delete(w);
        w.resolve(r);
      }
    }
  };

  constructor(private readonly bus: EventBus) {
    bus.on('outcome', this.listener);
  }

  /** Outcomes for one message id. */
  of(id: string): RecordedOutcome[] {
    return this.outcomes.filter((r) => r.info.id === id);
  }

  /**
   * Resolves with the first outcome (already recorded or future) for `id` whose status is
   * `status` (any status if omitted). Rejects with `TimeoutError` after `timeoutMs` (default 10 s).
   */
  waitFor(id: string, options: { status?: DeliveryOutcome['status']; group?: string; timeoutMs?: number } = {}): Promise<RecordedOutcome> {
    return this.waitUntil(
      (r) =>
        r.info.id === id &&
        (options.status === undefined || r.outcome.status === options.status) &&
        (options.group === undefined || r.info.group === options.group),
      { timeoutMs: options.timeoutMs, label: `outcome ${options.status ?? 'any'} for ${id}` },
    );
  }

  /** Resolves with the first recorded or future outcome matching `match`. */
  waitUntil(match: Predicate, options: { timeoutMs?: number | undefined; label?: string } = {}): Promise<RecordedOutcome> {
    const seen = this.outcomes.find(match);
    if (seen) return Promise.resolve(seen);
    const timeoutMs = options.timeoutMs ?? 10_000;
    return new Promise((resolve, reject) => {
      const waiter = {
        match,
        resolve: (r: RecordedOutcome) => {
          clearTimeout(timer);
          resolve(r);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(new TimeoutError(`timed out after ${timeoutMs} ms waiting for ${options.label ?? 'an outcome'}`));
      }, timeoutMs);
      // Not unref'd on purpose: a waiting spy keeps the process alive until its outcome or timeout
      // (transports' own timers, e.g. retry delays, are unref'd).
      this.waiters.add(waiter);
    });
  }

  /** Stops recording. */
  dispose(): void {
    this.bus.off('outcome', this.listener);
    this.waiters.clear();
  }
}
