/**
 * The delivery path of one subscription: from the transport's hand-over to exactly one settlement
 * (ack, retry, dead letter or release), through decoding, idempotency and the handler. The
 * decisions are delivery/policy.ts's, the copy headers delivery/copy-headers.ts's; this file runs
 * them, keeps settle-once and the causal hold of returning retry copies, and reports outcomes.
 */
import type { BusEvents, DeliveryInfo, DeliveryOutcome } from '../bus-events.js';
import type { DeadLetterReason, DecodeLimits } from '../envelope.js';
import { BusClosedError, CapabilityError, ConfigError, DeadLetterFailedError, describeError } from '../errors.js';
import type { EventDefinition, Upcasters } from '../event.js';
import { RESERVED_HEADER_PREFIX } from '../headers.js';
import type { Logger } from '../logger.js';
import type { IdempotencyOptions, SubscribeOptions } from '../options.js';
import type { BackoffOptions, Clock, RandomSource } from '../resilience.js';
import type { Delivery, Transport, TransportSubscription } from '../spi.js';
import { attemptOf } from './attempt.js';
import { RetryHolds } from './causal-hold.js';
import { type ContextOwner, DeliveryContext, type Handler } from './context.js';
import { deadLetterHeaders, releaseHeaders, retryHeaders } from './copy-headers.js';
import { type DecodedMessage, decodeInto, messageIdOf, NO_UPCASTERS, NO_USER_HEADERS } from './decode.js';
import { type ClaimDecision, claimDecision, classifyFailure, decide, type Failure, type RetrySettings } from './policy.js';
import { type Continuation, running as newRunning, type Running } from './running.js';

/** A running subscription. */
export interface Subscription {
  /** Group name. */
  readonly group: string;
  /** Handlers running now. */
  readonly inFlight: number;
  /** Stops intake, waits for in-flight handlers up to `timeoutMs`, releases the rest. */
  close(options?: { timeoutMs?: number }): Promise<void>;
  /** Resolves when the subscription has closed (by `close`, its signal or the bus). */
  readonly closed: Promise<void>;
}

/** What a subscription needs from its bus: a narrow object, not the bus. */
export interface SubscriptionHost {
  readonly transport: Transport;
  readonly logger: Logger;
  readonly random: RandomSource;
  readonly clock: Clock;
  readonly limits: DecodeLimits;
  readonly idempotency: IdempotencyOptions | undefined;
  /** Default of `close({ timeoutMs })`. */
  readonly closeTimeoutMs: number;
  /** The bus's lifecycle events. */
  readonly events: {
    listenerCount(event: keyof BusEvents): number;
    emit<K extends keyof BusEvents>(event: K, ...args: BusEvents[K]): boolean;
  };
}

const RESOLVED = Promise.resolve();
const ack = (d: Delivery) => d.ack();

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (
    value !== null && (typeof value === 'object' || typeof value === 'function') && typeof (value as { then?: unknown }).then === 'function'
  );
}

/** A subscription's options, resolved and validated by the bus. */
export interface ResolvedSubscription {
  topic: string;
  concurrency: number;
  maxAttempts: number;
  backoff: BackoffOptions;
  /** Longest retry delay the transport holds (`capabilities.maxRetryDelayMs`). */
  maxRetryDelayMs: number;
  ordering: 'none' | 'key';
  startFrom: 'latest' | 'earliest';
}

/**
 * Where `SubscriptionImpl.process` has each delivery decoded (`decodeInto` fills it, synchronously,
 * and `process` copies it out at once): one object for every subscription, not one per delivery.
 */
const decoded: DecodedMessage = { data: undefined, id: '', idempotencyKey: '', userHeaders: NO_USER_HEADERS, attributes: undefined };

/**
 * One subscription of a bus: takes the transport's deliveries and runs each to exactly one
 * settlement (see {@link Running}). A common path without an async frame for the usual case
 * (decoded, no idempotency store, no handler timeout) and {@link SubscriptionImpl.processAsync} for
 * everything else; both end in the same ack.
 */
export class SubscriptionImpl implements Subscription, ContextOwner {
  private transportSub: TransportSubscription | undefined;
  /**
   * Deliveries running now, oldest first: a list linked through the `Running` records rather than a
   * `Set`, whose add and delete per delivery allocate (its table is rebuilt as entries come and go).
   */
  private first: Running | undefined;
  private last: Running | undefined;
  private runningCount = 0;
  /** Set by `close` while it waits for the running deliveries to finish; called when none is left. */
  private drained: (() => void) | undefined;
  private closing: Promise<void> | undefined;
  private resolveClosed!: () => void;
  readonly closed = new Promise<void>((r) => {
    this.resolveClosed = r;
  });
  private readonly store: IdempotencyOptions | undefined;
  private readonly retry: RetrySettings;
  private readonly scope: string;
  private readonly limits: DecodeLimits;
  /** How the transport's binding spells an attribute header, for dead-letter reasons. */
  private readonly attributePrefix: string;
  /**
   * Common path: deliveries whose handlers are due, oldest first, linked through
   * `Running.nextStart`. The first one of a synchronous burst of deliveries queues one microtask
   * ({@link startHandlers}) that starts them all, in delivery order.
   */
  private startsHead: Running | undefined;
  private startsTail: Running | undefined;
  /**
   * Common path: promise callback pairs no delivery uses now (see {@link continuation}), linked
   * through `nextSpare` (an array's store would be reallocated as the pool empties and refills).
   */
  private spare: Continuation | undefined;
  private readonly upcasters: Upcasters;
  /** Retries still settling, whose copies must wait (causal order of outcomes). */
  private readonly holds = new RetryHolds();
  private readonly startHandlers = (): void => {
    let r = this.startsHead;
    this.startsHead = this.startsTail = undefined;
    while (r) {
      const next = r.nextStart;
      r.nextStart = undefined;
      try {
        this.runHandler(r);
      } catch (error) {
        this.crashed(r, error);
      }
      r = next;
    }
  };

  constructor(
    private readonly host: SubscriptionHost,
    private readonly event: EventDefinition,
    private readonly options: SubscribeOptions,
    private readonly handler: Handler<EventDefinition>,
    private readonly resolved: ResolvedSubscription,
  ) {
    this.store = options.idempotent === false ? undefined : host.idempotency;
    this.scope = `${resolved.topic}|${options.group}`;
    this.limits = host.limits;
    this.attributePrefix = host.transport.attributePrefix ?? RESERVED_HEADER_PREFIX;
    this.retry = {
      maxAttempts: resolved.maxAttempts,
      backoff: resolved.backoff,
      maxRetryDelayMs: resolved.maxRetryDelayMs,
      random: host.random,
    };
    this.upcasters = options.upcasters ?? NO_UPCASTERS;
  }

  get group(): string {
    return this.options.group;
  }

  get inFlight(): number {
    return this.runningCount;
  }

  async start(): Promise<void> {
    this.transportSub = await this.host.transport.subscribe(
      {
        topic: this.resolved.topic,
        group: this.options.group,
        concurrency: this.resolved.concurrency,
        startFrom: this.resolved.startFrom,
        orderedByKey: this.resolved.ordering === 'key',
      },
      (d) => this.onDelivery(d),
    );
    this.options.signal?.addEventListener('abort', () => void this.close(), { once: true });
    // The signal may have fired while the transport was subscribing (the listener was not there yet).
    if (this.options.signal?.aborted) void this.close();
  }

  close(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.closing) return this.closing;
    const timeoutMs = options.timeoutMs ?? this.host.closeTimeoutMs;
    this.closing = (async () => {
      try {
        await this.transportSub?.stop();
        const all =
          this.runningCount === 0
            ? RESOLVED
            : new Promise<void>((resolve) => {
                this.drained = resolve;
              });
        let timer: NodeJS.Timeout | undefined;
        const timedOut = await Promise.race([
          all.then(() => false),
          new Promise<boolean>((r) => {
            timer = setTimeout(() => r(true), timeoutMs);
          }),
        ]);
        clearTimeout(timer);
        if (timedOut) {
          const released: { id: string; attempt: number; position: string }[] = [];
          for (const r of this.runningNow()) {
            released.push({ id: r.ctx?.id ?? messageIdOf(r.delivery) ?? '', attempt: r.attempt, position: r.delivery.position });
            r.controller ??= new AbortController();
            r.controller.abort(new BusClosedError('subscription closed before the handler finished'));
            await this.settle(r, { status: 'released' }, (d) => d.release(releaseHeaders(d.headers, r.attempt)), undefined);
          }
          if (released.length > 0) this.logReleased(released, timeoutMs);
        }
        await this.transportSub?.close();
      } finally {
        this.resolveClosed();
      }
    })();
    return this.closing;
  }

  /** Says which handlers `close` aborted past its timeout (their messages go back for redelivery). */
  private logReleased(released: readonly { id: string; attempt: number; position: string }[], timeoutMs: number): void {
    const ids = released.slice(0, 10).map((r) => r.id);
    const more = released.length > ids.length ? ` and ${released.length - ids.length} more` : '';
    this.host.logger.warn(
      { type: this.event.type, group: this.options.group, topic: this.resolved.topic, timeoutMs, released: released.slice(0, 100) },
      `close: ${released.length} handler(s) of ${this.event.type} in group ${this.options.group} still running after ${timeoutMs} ms were aborted and their messages released for redelivery: ${ids.join(', ')}${more}`,
    );
  }

  private info(r: Running, idempotencyKey?: string): DeliveryInfo {
    return {
      id: r.ctx?.id ?? messageIdOf(r.delivery) ?? '',
      type: this.event.type,
      topic: this.resolved.topic,
      group: this.options.group,
      attempt: r.attempt,
      idempotencyKey,
    };
  }

  private onDelivery(delivery: Delivery): void {
    const running = newRunning(delivery, attemptOf(delivery), this.last);
    if (this.last) this.last.next = running;
    else this.first = running;
    this.last = running;
    this.runningCount++;
    const hold = running.attempt > 1 && this.holds.size > 0 ? this.holds.holdFor(messageIdOf(delivery), running.attempt) : undefined;
    if (hold === undefined) this.process(running);
    else void hold.then(() => this.processHeld(running));
  }

  /** A retry copy that was held until the retry that wrote it settled (see {@link RetryHolds}). */
  private processHeld(r: Running): void {
    if (r.settled)
      this.untrack(r); // released on close while held: the message comes back
    else this.process(r);
  }

  /** Takes a finished delivery off the running list (once, by the path that ended it). */
  private untrack(r: Running): void {
    if (r.prev) r.prev.next = r.next;
    else this.first = r.next;
    if (r.next) r.next.prev = r.prev;
    else this.last = r.prev;
    r.prev = r.next = undefined;
    if (--this.runningCount === 0 && this.drained) {
      const drained = this.drained;
      this.drained = undefined;
      drained();
    }
  }

  private logCrash(error: unknown): void {
    this.host.logger.error({ err: describeError(error), group: this.options.group }, 'delivery processing failed');
  }

  /** An unexpected failure while processing a delivery: logged; the delivery, unsettled, comes back. */
  private crashed(r: Running, error: unknown): void {
    try {
      this.logCrash(error);
    } finally {
      this.untrack(r);
    }
  }

  /** The deliveries running now, oldest first (a copy: settling them changes the list). */
  private runningNow(): Running[] {
    const out: Running[] = [];
    for (let r = this.first; r; r = r.next) out.push(r);
    return out;
  }

  /** Settles a delivery once; a later settle attempt (e.g. after a release on close) is ignored. */
  private async settle(
    r: Running,
    outcome: DeliveryOutcome,
    op: (delivery: Delivery) => Promise<void>,
    idempotencyKey: string | undefined,
  ): Promise<boolean> {
    if (r.settled) return false;
    r.settled = true;
    try {
      await op(r.delivery);
    } catch (error) {
      this.settleFailed(r, error, outcome.status, idempotencyKey);
      return false;
    }
    if (this.host.events.listenerCount('outcome') > 0) this.host.events.emit('outcome', this.info(r, idempotencyKey), outcome);
    return true;
  }

  /** Logs and reports a settlement the transport refused (the message will be redelivered). */
  private settleFailed(r: Running, error: unknown, wanted: DeliveryOutcome['status'], idempotencyKey: string | undefined): void {
    const info = this.info(r, idempotencyKey);
    const failed: DeliveryOutcome = { status: 'settle-failed', error: describeError(error) };
    this.host.logger.error({ ...info, err: failed.error, wanted }, 'could not settle delivery; it will be redelivered');
    this.host.events.emit('outcome', info, failed);
  }

  private async deadLetter(r: Running, reason: DeadLetterReason, handlerError: unknown, key: string | undefined): Promise<void> {
    const d = r.delivery;
    const headers = deadLetterHeaders(d.headers, {
      reason,
      error: reason.detail,
      attempts: r.attempt,
      origin: this.resolved.topic,
      position: d.position,
      group: this.options.group,
      nowMs: this.host.clock.now(),
    });
    this.host.logger.warn({ ...this.info(r, key), reason: reason.kind, detail: reason.detail }, 'dead-lettering message');
    await this.settle(
      r,
      { status: 'dead-lettered', reason },
      async () => {
        try {
          await r.delivery.deadLetter(headers);
        } catch (error) {
          throw new DeadLetterFailedError(
            `dead-letter write failed: ${describeError(error)}; handler failure: ${reason.detail}`,
            handlerError,
            error,
          );
        }
      },
      key,
    );
  }

  /** `ctx.extendLease`: the broker lease, then the idempotency lease. */
  async extendLease(r: Running, key: string, ms: number): Promise<void> {
    const d = r.delivery;
    if (!d.extendLease) {
      throw new CapabilityError('leaseExtension', `transport ${this.host.transport.name} has no leases to extend`);
    }
    await d.extendLease(ms);
    const store = this.store;
    if (store && r.token && store.store.extend) await store.store.extend(this.scope, key, r.token, ms);
  }

  /** `ctx.commitWithCompletion`. */
  addEffect(r: Running, effect: (tx: never) => void): void {
    if (!this.store) throw new ConfigError('commitWithCompletion needs an idempotency store (BusOptions.idempotency)');
    r.effects ??= [];
    r.effects.push(effect);
  }

  /**
   * Runs one delivery to its settlement, taking it off the running list when done. Never throws:
   * an unexpected failure is logged and the delivery, left unsettled, comes back (at-least-once).
   *
   * The common case (decoded, no idempotency store, no handler timeout) is a chain of three
   * promise reactions (handler start, handler result, ack) whose state lives in `r`: one reaction
   * per burst of deliveries starts their handlers, then one pair of callbacks, taken from a pool
   * ({@link continuation}), serves both the handler's result and the ack. An async function costs
   * a suspended frame with its whole register file plus, per `await`, a promise and its resume
   * closures. Everything else runs in {@link processAsync}, which ends in the same ack
   * ({@link ackDelivery}).
   */
  private process(r: Running): void {
    const d = r.delivery;
    const bus = this.host.events;
    let failure: DeadLetterReason | undefined;
    try {
      if (bus.listenerCount('delivered') > 0) bus.emit('delivered', this.info(r));
      failure = decodeInto(d, this.event, this.limits, this.upcasters, decoded, false, this.attributePrefix);
    } catch (error) {
      this.crashed(r, error);
      return;
    }
    if (failure !== undefined) {
      void this.processAsync(r, failure);
      return;
    }
    r.data = decoded.data;
    r.ctx = new DeliveryContext(decoded.id, decoded.idempotencyKey, this.resolved.maxAttempts, decoded.userHeaders, r, this);
    decoded.data = undefined; // `decoded` holds no message between deliveries
    decoded.userHeaders = NO_USER_HEADERS;
    if (this.store || this.options.handlerTimeoutMs !== undefined) {
      void this.processAsync(r, undefined);
      return;
    }
    r.started = Date.now();
    // The handler runs on a later microtask, never inside the transport's delivery callback.
    if (this.startsTail) this.startsTail.nextStart = r;
    else {
      this.startsHead = r;
      RESOLVED.then(this.startHandlers);
    }
    this.startsTail = r;
  }

  /** Common path, on a later microtask (see {@link startHandlers}): runs the handler. */
  private runHandler(r: Running): void {
    const data = r.data;
    r.data = undefined;
    let result: unknown;
    try {
      result = this.handler(data, r.ctx as DeliveryContext);
    } catch (error) {
      this.fastHandlerFailed(r, error);
      return;
    }
    if (!isThenable(result)) {
      this.ackDelivery(r, undefined);
      return;
    }
    const k = this.continuation(r);
    // `Promise.resolve` returns a native promise as it is, and makes any other thenable safe to
    // chain: either way each callback is called at most once, which the pool relies on.
    Promise.resolve(result).then(k.onFulfilled, k.onRejected);
  }

  /**
   * A pair of promise callbacks for `r`, from the pool. A pair goes back to the pool only once
   * neither callback is still registered anywhere ({@link resume}), so the pool holds at most as
   * many pairs as deliveries ran at once, and a delivery costs no closures of its own.
   */
  private continuation(r: Running): Continuation {
    let k = this.spare;
    if (k !== undefined) {
      this.spare = k.nextSpare;
      k.nextSpare = undefined;
    } else {
      const c: Continuation = {
        r: undefined,
        nextSpare: undefined,
        onFulfilled: () => this.resume(c, false, undefined),
        onRejected: (error: unknown) => this.resume(c, true, error),
      };
      k = c;
    }
    k.r = r;
    return k;
  }

  /** Common path: the handler's result, then the ack's, arrived. */
  private resume(k: Continuation, rejected: boolean, error: unknown): void {
    const r = k.r as Running;
    k.r = undefined;
    let chained = false;
    if (r.acking) {
      if (rejected) this.ackFailed(r, error);
      else this.acked(r);
    } else if (rejected) this.fastHandlerFailed(r, error);
    else chained = this.ackDelivery(r, k);
    if (!chained) {
      k.nextSpare = this.spare;
      this.spare = k;
    }
  }

  /**
   * The handler succeeded: acks `r`, then reports the outcome and takes `r` off the running list
   * (`settle(r, acked, ack, key)`, without its async frame). Both paths end here. Returns whether
   * `k` (or a pair from the pool, without `k`) now waits for the ack.
   */
  private ackDelivery(r: Running, k: Continuation | undefined): boolean {
    if (r.settled) {
      this.untrack(r); // released on close while running: the message comes back
      return false;
    }
    if (r.request !== undefined) {
      this.fastHandlerFailed(r, undefined); // the handler swallowed ctx.retry / ctx.deadLetter
      return false;
    }
    r.settled = true;
    r.acking = true;
    let acking: Promise<void>;
    try {
      acking = Promise.resolve(r.delivery.ack());
    } catch (error) {
      this.ackFailed(r, error);
      return false;
    }
    if (k === undefined) k = this.continuation(r);
    else k.r = r;
    acking.then(k.onFulfilled, k.onRejected);
    return true;
  }

  /** Acked; report the outcome to listeners. */
  private acked(r: Running): void {
    try {
      const bus = this.host.events;
      if (bus.listenerCount('outcome') > 0) {
        bus.emit('outcome', this.info(r, r.ctx?.idempotencyKey), { status: 'acked', durationMs: Date.now() - r.started });
      }
    } catch (error) {
      this.crashed(r, error);
      return;
    }
    this.untrack(r);
  }

  /** The transport refused the ack. */
  private ackFailed(r: Running, error: unknown): void {
    try {
      this.settleFailed(r, error, 'acked', r.ctx?.idempotencyKey);
    } catch (e) {
      this.crashed(r, e);
      return;
    }
    this.untrack(r);
  }

  /** Common path: the handler threw or rejected. */
  private fastHandlerFailed(r: Running, error: unknown): void {
    this.handlerFailed(r, error, (r.ctx as DeliveryContext).idempotencyKey).then(
      () => this.untrack(r),
      (e: unknown) => this.crashed(r, e),
    );
  }

  /**
   * {@link process} for a delivery that failed to decode (`failure`), or runs with an idempotency
   * store or a handler timeout.
   */
  private async processAsync(r: Running, failure: DeadLetterReason | undefined): Promise<void> {
    /** Set once {@link ackDelivery} took the delivery over (it takes it off the running list). */
    let acking = false;
    try {
      if (failure !== undefined) {
        await this.deadLetter(r, failure, undefined, undefined);
        return;
      }
      const ctx = r.ctx as DeliveryContext;
      const data = r.data;
      r.data = undefined;
      const key = ctx.idempotencyKey;
      const store = this.store;
      if (store) {
        let claim: ClaimDecision;
        try {
          claim = claimDecision(await store.store.claim(this.scope, key, store.leaseMs ?? 30_000), key);
        } catch (error) {
          await this.failed(r, classifyFailure(error), error, key);
          return;
        }
        if (claim.action === 'duplicate') {
          await this.settle(r, { status: 'duplicate' }, ack, key);
          return;
        }
        if (claim.action === 'retry') {
          await this.failed(r, claim.failure, claim.error, key);
          return;
        }
        r.token = claim.token;
      }

      r.started = Date.now();
      try {
        // The handler runs on a later microtask, never inside the transport's delivery callback.
        await RESOLVED;
        const result: unknown = this.handler(data, ctx);
        const timeoutMs = this.options.handlerTimeoutMs;
        if (timeoutMs !== undefined) await this.withTimeout(r, result, timeoutMs);
        else if (isThenable(result)) await result;
      } catch (error) {
        await this.handlerFailed(r, error, key);
        return;
      }
      if (r.settled) return; // released on close while running: the message comes back
      if (r.request !== undefined) {
        await this.handlerFailed(r, undefined, key); // the handler swallowed ctx.retry / ctx.deadLetter
        return;
      }
      const token = r.token;
      if (store && token) {
        try {
          await store.store.complete(this.scope, key, token, store.ttlMs ?? 86_400_000, r.effects ?? []);
        } catch (error) {
          await this.failed(r, classifyFailure(error), error, key);
          return;
        }
        if (r.settled) return;
      }
      acking = true;
      this.ackDelivery(r, undefined);
    } catch (error) {
      this.logCrash(error);
    } finally {
      if (!acking) this.untrack(r);
    }
  }

  /**
   * Awaits the handler's result for at most `ms`, then aborts its signal and rejects. Apart from
   * `process` so that its closure does not make `process` allocate a context per delivery.
   */
  private async withTimeout(r: Running, result: unknown, ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        result,
        new Promise((_, reject) => {
          timer = setTimeout(() => {
            const err = new Error(`handler exceeded handlerTimeoutMs (${ms} ms)`);
            r.controller ??= new AbortController();
            r.controller.abort(err);
            reject(err);
          }, ms);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * The handler threw (or timed out), or returned after swallowing its own `ctx.retry()` /
   * `ctx.deadLetter()`: release the idempotency claim, then retry or dead-letter. A request the
   * context recorded wins over what the handler threw.
   */
  private async handlerFailed(r: Running, error: unknown, key: string): Promise<void> {
    const store = this.store;
    const token = r.token;
    if (store && token) await store.store.release(this.scope, key, token).catch(() => {});
    if (r.settled) return;
    const request = r.request;
    if (request !== undefined && request !== error) {
      this.host.logger.warn(
        { ...this.info(r, key), request: request.name, thrown: error === undefined ? undefined : describeError(error) },
        'the handler swallowed its ctx.retry() / ctx.deadLetter() request; honouring it',
      );
    }
    const cause = request ?? error;
    await this.failed(r, classifyFailure(cause), cause, key);
  }

  /** A failed attempt: retry it or dead-letter it, as {@link decide} says. */
  private async failed(r: Running, failure: Failure, error: unknown, key: string | undefined): Promise<void> {
    const decision = decide(failure, r.attempt, this.retry);
    if (decision.action === 'dead-letter') {
      await this.deadLetter(r, decision.reason, error, key);
      return;
    }
    const d = r.delivery;
    const { delayMs, detail } = decision;
    const headers = retryHeaders(d.headers, r.attempt + 1, this.host.clock.now());
    const settled = this.settle(r, { status: 'retried', delayMs, error: detail }, () => d.retry(delayMs, headers), key);
    // Registered before the transport can have written the copy (its write is asynchronous): the
    // copy (same id, next attempt) waits in `onDelivery` until this retry settled.
    this.holds.retrying(r.ctx?.id ?? messageIdOf(d), r.attempt + 1, settled);
    await settled;
  }
}
