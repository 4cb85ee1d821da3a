/**
 * Interceptors: code that wraps every publish and every handler run of a bus (logging, tracing,
 * metrics, custom policies), registered with `BusOptions.interceptors`. Plain composition, the way
 * Watermill's router middleware is: each interceptor gets the call and `next`, the rest of the
 * chain; the first registered is the outermost.
 *
 * Nothing here runs when no interceptor is registered: the bus then keeps the plain publish and
 * delivery paths (no closure, no promise, no object per message).
 */

import type { Handler, HandlerContext } from './delivery/context.js';
import type { EnvelopeAttributes } from './envelope.js';
import type { EventDefinition } from './event.js';
import type { PublishOptions } from './options.js';
import type { PublishReceipt } from './publish/publisher.js';

/** One publish, as a publish interceptor sees it (before validation and encoding). */
export interface PublishCall {
  /** The event definition published. */
  readonly event: EventDefinition;
  /** The data as the caller passed it (not validated yet). */
  readonly data: unknown;
  /** The caller's options (a shared empty object when none were given: never mutate it). */
  readonly options: PublishOptions;
  /**
   * The broker-level destination (namespace applied). Informational: `next` derives the topic from
   * the call's `event` again.
   */
  readonly topic: string;
}

/**
 * Wraps a publish. Call `next` at most once to go on (to the inner interceptors, then validation,
 * encoding and the transport) and return (or await) what it returns; pass a new call to change what
 * is published — typically `next({ ...call, options: { ...call.options, traceparent } })` to carry
 * trace context. Not calling `next` means the message is not published: return or throw what the
 * caller should get. A throw (or rejection) reaches the caller of `bus.publish` as it is.
 *
 * Runs synchronously inside `bus.publish` up to its first `await`: an `AsyncLocalStorage` value the
 * interceptor enters around `next(…)` is visible to the inner interceptors.
 *
 * Messages published with `publishEncoded` (already encoded: an outbox) do not pass through
 * publish interceptors.
 */
export type PublishInterceptor = (call: PublishCall, next: (call?: PublishCall) => Promise<PublishReceipt>) => Promise<PublishReceipt>;

/** One handler run, as a handle interceptor sees it: the handler's context plus where it runs. */
export interface HandleCall extends HandlerContext {
  /** The event definition subscribed to. */
  readonly event: EventDefinition;
  /** The consumer group. */
  readonly group: string;
  /** The broker-level topic (namespace applied). */
  readonly topic: string;
  /** The transport's name (`rabbitmq`, `kafka`, `redis-streams`, `memory` …). */
  readonly transport: string;
}

/**
 * Wraps a handler run (its decoding is done; the idempotency claim, if any, is held). `next()`
 * runs the inner interceptors and then the handler, and rejects with what the handler threw — so
 * an interceptor sees the failure (including the `RetryLaterError` / `DeadLetterRequestedError`
 * of `ctx.retry()` / `ctx.deadLetter()`). Call `next` at most once (a second call rejects).
 *
 * After the chain, core settles the delivery as it does without interceptors: a rejection of the
 * chain counts as the handler's failure (retry or dead letter per policy), a resolution acks — so
 * an interceptor that swallows the handler's error makes the message acked, except that a
 * `ctx.retry()` / `ctx.deadLetter()` request is honoured anyway. The final outcome is reported by
 * the bus's `outcome` event.
 *
 * Code inside `next()` runs in the interceptor's async context: an `AsyncLocalStorage` value (an
 * OpenTelemetry context) entered around `next()` is what the handler sees.
 */
export type HandleInterceptor = (call: HandleCall, next: () => Promise<void>) => Promise<void>;

/** `BusOptions.interceptors`. */
export interface Interceptors {
  /** Around every `bus.publish`, first registered outermost. @defaultValue none */
  readonly publish?: readonly PublishInterceptor[];
  /** Around every handler run of every subscription, first registered outermost. @defaultValue none */
  readonly handle?: readonly HandleInterceptor[];
}

/**
 * Runs `call` through `interceptors` (from `index` on), then `final`. A synchronous throw of an
 * interceptor becomes a rejection.
 */
export function runPublishChain(
  interceptors: readonly PublishInterceptor[],
  index: number,
  call: PublishCall,
  final: (call: PublishCall) => Promise<PublishReceipt>,
): Promise<PublishReceipt> {
  if (index === interceptors.length) return final(call);
  const interceptor = interceptors[index] as PublishInterceptor;
  let called = false;
  const next = (nextCall?: PublishCall): Promise<PublishReceipt> => {
    if (called) return Promise.reject(new Error('a publish interceptor called next() twice'));
    called = true;
    return runPublishChain(interceptors, index + 1, nextCall ?? call, final);
  };
  try {
    return interceptor(call, next);
  } catch (error) {
    return Promise.reject(error);
  }
}

/** Where a subscription's handler runs, for its {@link HandleCall}s. */
export interface HandleSite {
  readonly event: EventDefinition;
  readonly group: string;
  readonly topic: string;
  readonly transport: string;
}

/**
 * The handler wrapped in `interceptors` (the bus passes the result to the subscription as its
 * handler, so the delivery paths do not change). Returns `handler` itself when there are none.
 */
export function interceptHandler(
  interceptors: readonly HandleInterceptor[] | undefined,
  handler: Handler<EventDefinition>,
  site: HandleSite,
): Handler<EventDefinition> {
  if (interceptors === undefined || interceptors.length === 0) return handler;
  const chain = [...interceptors];
  return (data, ctx) => {
    const call = new InterceptedCall(ctx, site);
    const run = (index: number): Promise<void> => {
      if (index === chain.length) {
        try {
          return Promise.resolve(handler(data, ctx)).then(discard);
        } catch (error) {
          return Promise.reject(error);
        }
      }
      let called = false;
      const next = (): Promise<void> => {
        if (called) return Promise.reject(new Error('a handle interceptor called next() twice'));
        called = true;
        return run(index + 1);
      };
      try {
        return (chain[index] as HandleInterceptor)(call, next);
      } catch (error) {
        return Promise.reject(error);
      }
    };
    return run(0);
  };
}

function discard(): void {}

/**
 * A {@link HandleCall}: the handler's context (read through, so its lazily made parts stay lazy)
 * plus the site.
 */
class InterceptedCall implements HandleCall {
  readonly #ctx: HandlerContext;
  readonly #site: HandleSite;
  constructor(ctx: HandlerContext, site: HandleSite) {
    this.#ctx = ctx;
    this.#site = site;
  }
  get event(): EventDefinition {
    return this.#site.event;
  }
  get group(): string {
    return this.#site.group;
  }
  get topic(): string {
    return this.#site.topic;
  }
  get transport(): string {
    return this.#site.transport;
  }
  get id(): string {
    return this.#ctx.id;
  }
  get idempotencyKey(): string {
    return this.#ctx.idempotencyKey;
  }
  get attempt(): number {
    return this.#ctx.attempt;
  }
  get maxAttempts(): number {
    return this.#ctx.maxAttempts;
  }
  get headers(): Readonly<Record<string, string>> {
    return this.#ctx.headers;
  }
  get attributes(): EnvelopeAttributes {
    return this.#ctx.attributes;
  }
  get signal(): AbortSignal {
    return this.#ctx.signal;
  }
  get position(): string {
    return this.#ctx.position;
  }
  get extendLease(): (ms: number) => Promise<void> {
    return this.#ctx.extendLease;
  }
  get retry(): (options?: { delayMs?: number; reason?: string }) => never {
    return this.#ctx.retry;
  }
  get deadLetter(): (reason: string) => never {
    return this.#ctx.deadLetter;
  }
  get commitWithCompletion(): <TTx = unknown>(effect: (tx: TTx) => void) => void {
    return this.#ctx.commitWithCompletion;
  }
}
