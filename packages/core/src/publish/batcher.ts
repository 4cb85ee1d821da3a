import { getEventListeners } from 'node:events';
import { BackpressureError, BrokerUnavailableError, type BusClosedError, BusError, PublishTimeoutError } from '../errors.js';
import type { CircuitBreaker } from '../resilience.js';
import type { OutgoingMessage, PublishOutcome, Transport } from '../spi.js';

/** Auto-batching of concurrent publishes. */
export interface BatchingOptions {
  /**
   * Most messages coalesced into one transport call (one confirm window, pipeline or
   * `sendBatch`). @defaultValue 500
   */
  maxBatchSize?: number;
  /**
   * Transport calls allowed in flight at once. The publishes issued in one synchronous run of code
   * share a call (it is cut in a microtask); publishes issued while all calls are busy wait and
   * are coalesced into the next call. No timer is involved, so a lone publish is sent at once (the
   * "max wait" is one broker round trip, plus one event-loop turn after a call of several
   * publishes or while publishes are waiting: the next call is then cut after the callers the
   * finished call released had their turn to publish again, so N concurrent publishers fill
   * batches of N rather than alternating halves).
   *
   * Order: with one call in flight, publish order per key is kept across batches on every
   * transport. More calls in flight keep it only on a transport whose
   * `capabilities.orderedPublishCalls` says so (RabbitMQ: one confirm channel); set no more than
   * that. On such a transport, more calls in flight lets publishes issued while a call awaits its
   * confirms go out at once instead of waiting a round trip (lower latency under a steady flow of
   * publishes). Either way a failed publish does not stop the ones after it: when a message is
   * rejected or its outcome is unknown, later messages — of the same batch, and of later calls
   * already in flight — may still land, and republishing the failed one puts it after them.
   * @defaultValue the transport's `capabilities.orderedPublishCalls`, else 1
   */
  maxInFlightBatches?: number;
}

interface Entry {
  readonly message: OutgoingMessage;
  readonly deadline: number;
  readonly timeoutMs: number;
  /** What the publish resolves with. */
  readonly result: unknown;
  settled: boolean;
  /** The broker confirmed it (reported once: through `onDurable` or in the call's outcomes). */
  confirmed: boolean;
  resolve(value: unknown): void;
  reject(error: Error): void;
}

/**
 * The resolving functions of the promise {@link PublishBatcher} made last: one executor for every
 * publish (it stores them here, and `enqueue` takes them at once) instead of a closure per publish.
 */
let madeResolve: ((value: unknown) => void) | undefined;
let madeReject: ((error: Error) => void) | undefined;
function capture(resolve: (value: unknown) => void, reject: (error: Error) => void): void {
  madeResolve = resolve;
  madeReject = reject;
}

/** A transport call in flight, aborted once the latest deadline of its publishes passed. */
interface InFlightCall {
  readonly controller: AbortController;
  readonly deadline: number;
  /** Its publishes (watched for their deadlines while the call runs). */
  readonly batch: readonly Entry[];
}

/** Options the bus gives its batcher. */
export interface BatcherOptions extends BatchingOptions {
  readonly transport: Transport;
  readonly breaker: CircuitBreaker | undefined;
  /** Publishes pending (queued or in flight) before the overflow policy applies. */
  readonly maxPending: number;
  /** What happens past `maxPending`. */
  readonly overflow: 'wait' | 'reject';
  readonly onSent?: (message: OutgoingMessage) => void;
  /**
   * Why nothing may be handed to the transport now (it is not connected), or `undefined`. Asked
   * before each transport call — a refused batch fails with this error, and the breaker does not
   * count it (no I/O was made) — and for a queued publish whose deadline passed (it was never sent,
   * so its outcome is known: this error rather than `PublishTimeoutError`).
   */
  readonly refuse?: () => Error | undefined;
}

/**
 * Coalesces publishes issued while a transport call is in flight into the next call, keeping a
 * result per message. One mechanism for every transport.
 *
 * Deadlines (each publish's `timeoutMs`, and each transport call's abort at the latest deadline of
 * its publishes) are enforced by one timer armed at the earliest pending deadline, rather than a
 * timer per publish and per call: the per-message cost of a timer is what an awaited publish pays
 * most for on a fast transport. Whenever nothing is pending the timer is unref'd (it no longer
 * keeps the process alive) rather than cleared, so publishes awaited one by one re-use it instead
 * of each arming and clearing one; when it fires with nothing pending it is dropped, and `drain`
 * clears it.
 */
export class PublishBatcher {
  /** Publishes not yet handed to the transport (settled ones are skipped when a batch is cut). */
  private readonly queue: Entry[] = [];
  /** Transport calls in flight, watched for their deadline. */
  private readonly calls = new Set<InFlightCall>();
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Number.POSITIVE_INFINITY;
  /** The timer is unref'd: nothing is pending. */
  private timerIdle = false;
  /**
   * Controllers of finished calls that were never aborted and have no listener left, for the next
   * call: creating an `AbortController` costs several µs on Node 20 (its signal's prototype is set
   * at run time), as much as the rest of an awaited publish's bookkeeping.
   */
  private readonly spareControllers: AbortController[] = [];
  /** A call completed and the next one is cut on the next event-loop turn (see `maxInFlightBatches`). */
  private pumpDeferred = false;
  /** A batch is cut in a microtask: the publishes issued in the same synchronous run share it. */
  private pumpQueued = false;
  private inFlight = 0;
  /** Unsettled publishes: queued, or in a transport call in flight. */
  private pending = 0;
  private readonly capacityWaiters: (() => void)[] = [];
  private readonly idleWaiters: (() => void)[] = [];
  private readonly maxBatch: number;
  private readonly maxInFlight: number;

  constructor(private readonly options: BatcherOptions) {
    this.maxBatch = Math.max(1, options.maxBatchSize ?? 500);
    this.maxInFlight = Math.max(1, options.maxInFlightBatches ?? 1);
  }

  /** Publishes queued or in flight. */
  get pendingCount(): number {
    return this.pending;
  }

  /**
   * Queues `message`; resolves (with `result`) once the transport reports it durable. Rejects with
   * `PublishTimeoutError` at `timeoutMs` whatever the transport does (outcome then unknown).
   */
  publish<T = void>(message: OutgoingMessage, timeoutMs: number, result?: T): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    if (this.pending >= this.options.maxPending) return this.publishWhenRoom(message, deadline, timeoutMs, result as T);
    return this.enqueue(message, deadline, timeoutMs, result);
  }

  private async publishWhenRoom<T>(message: OutgoingMessage, deadline: number, timeoutMs: number, result: T): Promise<T> {
    if (this.options.overflow === 'reject') throw new BackpressureError(this.options.maxPending);
    await this.waitForCapacity(deadline, message.id);
    return this.enqueue(message, deadline, timeoutMs, result);
  }

  /** Queues a publish (no async function, no `await`, no closure: this runs once per message). */
  private enqueue<T>(message: OutgoingMessage, deadline: number, timeoutMs: number, result: unknown): Promise<T> {
    this.pending++;
    const promise = new Promise<T>(capture as (resolve: (value: T) => void, reject: (error: Error) => void) => void);
    const entry: Entry = {
      message,
      deadline,
      timeoutMs,
      result,
      settled: false,
      confirmed: false,
      resolve: madeResolve as (value: unknown) => void,
      reject: madeReject as (error: Error) => void,
    };
    madeResolve = madeReject = undefined;
    this.watchDeadline(deadline);
    this.queue.push(entry);
    if (!this.pumpDeferred && !this.pumpQueued && this.inFlight < this.maxInFlight) {
      this.pumpQueued = true;
      queueMicrotask(this.pumpNow);
    }
    return promise;
  }

  /** Resolves when nothing is queued or in flight (and then clears the idle deadline timer). */
  async drain(): Promise<void> {
    if (this.pending > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    if (this.timer && this.timerIdle) {
      clearTimeout(this.timer);
      this.timer = undefined;
      this.timerAt = Number.POSITIVE_INFINITY;
    }
  }

  /** Rejects everything still queued (not yet handed to the transport). */
  rejectQueued(error: BusClosedError): void {
    for (const entry of this.queue.splice(0)) this.settle(entry, error);
  }

  private waitForCapacity(deadline: number, id: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => {
          const i = this.capacityWaiters.indexOf(go);
          if (i >= 0) this.capacityWaiters.splice(i, 1);
          reject(
            new PublishTimeoutError(
              `publish of ${id} waited for capacity (${this.options.maxPending} pending) past its timeout; it was not sent`,
            ),
          );
        },
        Math.max(0, deadline - Date.now()),
      );
      const go = () => {
        clearTimeout(timer);
        resolve();
      };
      this.capacityWaiters.push(go);
    });
  }

  private settle(entry: Entry, error?: Error): void {
    if (entry.settled) return;
    entry.settled = true;
    this.pending--;
    this.disarmIfIdle();
    if (error) entry.reject(error);
    else entry.resolve(entry.result);
    this.capacityWaiters.shift()?.();
    if (this.pending === 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  /**
   * The broker holds `entry`'s message: `onSent` once, and the publish resolves (unless it timed out
   * already: its caller was told the outcome is unknown, but the message did land).
   */
  private confirmed(entry: Entry): void {
    if (entry.confirmed) return;
    entry.confirmed = true;
    this.options.onSent?.(entry.message);
    this.settle(entry);
  }

  /** Keeps a finished call's controller for reuse if nothing can observe it any more (not aborted, no listener). */
  private recycle(controller: AbortController): void {
    if (controller.signal.aborted || this.spareControllers.length >= this.maxInFlight) return;
    if (getEventListeners(controller.signal, 'abort').length > 0) return;
    this.spareControllers.push(controller);
  }

  /** Makes sure the deadline timer fires no later than `deadline` (and keeps the process alive). */
  private watchDeadline(deadline: number): void {
    if (this.timerIdle) {
      this.timerIdle = false;
      this.timer?.ref();
    }
    if (deadline >= this.timerAt) return;
    if (this.timer) clearTimeout(this.timer);
    this.timerAt = deadline;
    this.timer = setTimeout(() => this.sweep(), Math.max(0, deadline - Date.now()));
  }

  /** Unrefs the deadline timer when nothing is watched, so an idle batcher keeps no process alive. */
  private disarmIfIdle(): void {
    if (this.timer && !this.timerIdle && this.pending === 0 && this.calls.size === 0) {
      this.timerIdle = true;
      this.timer.unref();
    }
  }

  /** Times out every publish and aborts every transport call past its deadline; re-arms for the next one. */
  private sweep(): void {
    this.timer = undefined;
    this.timerAt = Number.POSITIVE_INFINITY;
    this.timerIdle = false;
    const now = Date.now();
    let next = Number.POSITIVE_INFINITY;
    const expire = (entry: Entry, refusal?: Error): void => {
      if (entry.settled) return;
      if (entry.deadline <= now) {
        this.settle(
          entry,
          refusal ??
            new PublishTimeoutError(
              `publish of ${entry.message.id} to ${entry.message.topic} did not settle within ${entry.timeoutMs} ms; its outcome is unknown`,
            ),
        );
      } else if (entry.deadline < next) next = entry.deadline;
    };
    for (const call of this.calls) for (const entry of call.batch) expire(entry);
    const refusal = this.queue.length > 0 ? this.options.refuse?.() : undefined;
    for (const entry of this.queue) expire(entry, refusal);
    for (const call of this.calls) {
      if (call.deadline <= now) {
        this.calls.delete(call);
        call.controller.abort(new PublishTimeoutError('publish batch timed out'));
      } else if (call.deadline < next) next = call.deadline;
    }
    if (next !== Number.POSITIVE_INFINITY) this.watchDeadline(next);
  }

  private readonly pumpNow = (): void => {
    this.pumpQueued = false;
    if (!this.pumpDeferred) this.pump();
  };

  private pump(): void {
    while (this.inFlight < this.maxInFlight && this.queue.length > 0) {
      const batch: Entry[] = [];
      while (batch.length < this.maxBatch && this.queue.length > 0) {
        const e = this.queue.shift() as Entry;
        if (!e.settled) batch.push(e);
      }
      if (batch.length === 0) return;
      this.inFlight++;
      void this.send(batch);
    }
  }

  /** One transport call for `batch`; settles every publish of it. */
  private async send(batch: Entry[]): Promise<void> {
    try {
      const breaker = this.options.breaker;
      const refusal = this.options.refuse?.();
      if (refusal !== undefined) {
        for (const e of batch) this.settle(e, refusal);
        return;
      }
      try {
        breaker?.admit();
      } catch (error) {
        for (const e of batch) this.settle(e, error as Error);
        return;
      }
      let latest = 0;
      const messages: OutgoingMessage[] = new Array(batch.length);
      for (let i = 0; i < batch.length; i++) {
        const e = batch[i] as Entry;
        if (e.deadline > latest) latest = e.deadline;
        messages[i] = e.message;
      }
      const call: InFlightCall = { controller: this.spareControllers.pop() ?? new AbortController(), deadline: latest, batch };
      this.calls.add(call);
      this.watchDeadline(latest);
      // A publisher whose own message is durable is released at once (see Transport.publish).
      const onDurable =
        batch.length > 1
          ? (i: number): void => {
              const entry = batch[i];
              if (entry !== undefined) this.confirmed(entry);
            }
          : undefined;
      let outcomes: readonly PublishOutcome[];
      try {
        outcomes = await this.options.transport.publish(messages, call.controller.signal, onDurable);
      } catch (error) {
        const err = toPublishError(error);
        breaker?.onFailure(err);
        for (const e of batch) this.settle(e, err);
        return;
      } finally {
        this.calls.delete(call);
        this.disarmIfIdle();
        this.recycle(call.controller);
      }
      let brokerFailure: Error | undefined;
      for (let i = 0; i < batch.length; i++) {
        const entry = batch[i] as Entry;
        const outcome = outcomes[i];
        if (outcome === undefined) {
          this.settle(entry, new BrokerUnavailableError(`transport returned no outcome for ${entry.message.id}`));
        } else if (outcome.ok) {
          this.confirmed(entry);
        } else {
          const err = toPublishError(outcome.error);
          if (err instanceof BusError && err.retryable) brokerFailure = err;
          this.settle(entry, err);
        }
      }
      if (brokerFailure) breaker?.onFailure(brokerFailure);
      else breaker?.onSuccess();
    } finally {
      this.inFlight--;
      // When publishes are waiting or this call released several publishers, let those run
      // their continuations (often a next publish) before cutting the next batch, so they join
      // it instead of waiting one more round trip. After a lone publish with nothing waiting
      // (publishes awaited one by one), the next publish is sent at once, as ever.
      if ((this.queue.length > 0 || batch.length > 1) && !this.pumpDeferred) {
        this.pumpDeferred = true;
        setImmediate(() => {
          this.pumpDeferred = false;
          this.pump();
        });
      }
    }
  }
}

function toPublishError(error: unknown): Error {
  if (error instanceof BusError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new BrokerUnavailableError(`publish failed: ${message}`, { cause: error });
}
