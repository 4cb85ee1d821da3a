import { BackpressureError, BrokerUnavailableError, type BusClosedError, BusError, PublishTimeoutError } from './errors.js';
import type { CircuitBreaker } from './resilience.js';
import type { OutgoingMessage, PublishOutcome, Transport } from './spi.js';

/** Auto-batching of concurrent publishes. */
export interface BatchingOptions {
  /**
   * Most messages coalesced into one transport call (one confirm window, pipeline or
   * `sendBatch`). @defaultValue 500
   */
  maxBatchSize?: number;
  /**
   * Transport calls allowed in flight at once. Publishes issued while all are busy wait and are
   * coalesced into the next call; no timer is involved, so a lone publish is sent at once (the
   * "max wait" is one broker round trip). `1` also keeps publish order per key across batches.
   * @defaultValue 1
   */
  maxInFlightBatches?: number;
}

interface Entry {
  readonly message: OutgoingMessage;
  readonly deadline: number;
  settled: boolean;
  resolve(): void;
  reject(error: Error): void;
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
}

/**
 * Coalesces publishes issued while a transport call is in flight into the next call, keeping a
 * result per message. One mechanism for every transport.
 */
export class PublishBatcher {
  private readonly queue: Entry[] = [];
  private inFlight = 0;
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
   * Queues `message`; resolves once the transport reports it durable. Rejects with
   * `PublishTimeoutError` at `timeoutMs` whatever the transport does (outcome then unknown).
   */
  async publish(message: OutgoingMessage, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    if (this.pending >= this.options.maxPending) {
      if (this.options.overflow === 'reject') throw new BackpressureError(this.options.maxPending);
      await this.waitForCapacity(deadline, message.id);
    }
    this.pending++;
    try {
      await new Promise<void>((resolve, reject) => {
        const entry: Entry = { message, deadline, settled: false, resolve, reject };
        const timer = setTimeout(() => {
          this.settle(
            entry,
            new PublishTimeoutError(
              `publish of ${message.id} to ${message.topic} did not settle within ${timeoutMs} ms; its outcome is unknown`,
            ),
          );
        }, timeoutMs);
        entry.resolve = () => {
          clearTimeout(timer);
          resolve();
        };
        entry.reject = (e) => {
          clearTimeout(timer);
          reject(e);
        };
        this.queue.push(entry);
        this.pump();
      });
    } finally {
      this.pending--;
      this.capacityWaiters.shift()?.();
      if (this.pending === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /** Resolves when nothing is queued or in flight. */
  drain(): Promise<void> {
    if (this.pending === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
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
    if (error) entry.reject(error);
    else entry.resolve();
  }

  private pump(): void {
    while (this.inFlight < this.maxInFlight && this.queue.length > 0) {
      const batch: Entry[] = [];
      while (batch.length < this.maxBatch && this.queue.length > 0) {
        const e = this.queue.shift() as Entry;
        if (!e.settled) batch.push(e);
      }
      if (batch.length === 0) return;
      this.inFlight++;
      void this.send(batch).finally(() => {
        this.inFlight--;
        this.pump();
      });
    }
  }

  private async send(batch: Entry[]): Promise<void> {
    const breaker = this.options.breaker;
    try {
      breaker?.admit();
    } catch (error) {
      for (const e of batch) this.settle(e, error as Error);
      return;
    }
    const controller = new AbortController();
    const latest = Math.max(...batch.map((e) => e.deadline));
    const timer = setTimeout(() => controller.abort(new PublishTimeoutError('publish batch timed out')), Math.max(0, latest - Date.now()));
    let outcomes: readonly PublishOutcome[];
    try {
      outcomes = await this.options.transport.publish(
        batch.map((e) => e.message),
        controller.signal,
      );
    } catch (error) {
      const err = toPublishError(error);
      breaker?.onFailure(err);
      for (const e of batch) this.settle(e, err);
      return;
    } finally {
      clearTimeout(timer);
    }
    let brokerFailure: Error | undefined;
    batch.forEach((entry, i) => {
      const outcome = outcomes[i];
      if (outcome === undefined) {
        this.settle(entry, new BrokerUnavailableError(`transport returned no outcome for ${entry.message.id}`));
      } else if (outcome.ok) {
        this.options.onSent?.(entry.message);
        this.settle(entry);
      } else {
        const err = toPublishError(outcome.error);
        if (err instanceof BusError && err.retryable) brokerFailure = err;
        this.settle(entry, err);
      }
    });
    if (brokerFailure) breaker?.onFailure(brokerFailure);
    else breaker?.onSuccess();
  }
}

function toPublishError(error: unknown): Error {
  if (error instanceof BusError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new BrokerUnavailableError(`publish failed: ${message}`, { cause: error });
}
