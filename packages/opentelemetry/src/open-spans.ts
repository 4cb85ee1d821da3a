/**
 * `process` spans whose handler returned but whose delivery is not settled yet: each ends when the
 * bus reports the delivery's `outcome` (which sets `busbar.delivery.outcome`), or after
 * `outcomeTimeoutMs` without one (outcome `unknown`), or when the telemetry is detached from its
 * last bus. Keyed by destination, group, message id and attempt: what a `DeliveryInfo` names.
 */

import type { DeliveryInfo, DeliveryOutcome } from '@busbar/core';
import { type Span, SpanStatusCode } from '@opentelemetry/api';
import { ATTR_BUSBAR_DEAD_LETTER_REASON, ATTR_BUSBAR_OUTCOME } from './semconv.js';

interface Open {
  readonly span: Span;
  /** When the handler returned (epoch ms); `undefined` while it runs (never swept then). */
  at: number | undefined;
}

export function deliveryKey(topic: string, group: string, id: string, attempt: number): string {
  return `${topic}\u0000${group}\u0000${id}\u0000${attempt}`;
}

export class OpenSpans {
  readonly #open = new Map<string, Open>();
  #sweeper: NodeJS.Timeout | undefined;

  constructor(private readonly timeoutMs: number) {}

  /** Number of spans waiting (for tests). */
  get size(): number {
    return this.#open.size;
  }

  /**
   * Registers the span of a handler run that starts now (ending an earlier span under the same
   * key): the outcome may come while the handler still runs (a handler timeout settles it).
   */
  open(key: string, span: Span): void {
    const earlier = this.#open.get(key);
    if (earlier !== undefined) end(earlier.span, 'unknown');
    this.#open.set(key, { span, at: undefined });
  }

  /** The handler of `key` returned: its span now waits at most `timeoutMs` for the outcome. */
  handled(key: string, span: Span): void {
    const o = this.#open.get(key);
    if (o === undefined || o.span !== span) return;
    o.at = Date.now();
    if (this.#sweeper === undefined) {
      this.#sweeper = setInterval(() => this.sweep(), Math.max(1000, this.timeoutMs / 2));
      this.#sweeper.unref();
    }
  }

  /** Ends the span of `info` (if one waits) with `outcome`. */
  settle(info: DeliveryInfo, outcome: DeliveryOutcome): void {
    if (this.#open.size === 0) return;
    const key = deliveryKey(info.topic, info.group, info.id, info.attempt);
    const o = this.#open.get(key);
    if (o === undefined) return;
    this.#open.delete(key);
    const span = o.span;
    span.setAttribute(ATTR_BUSBAR_OUTCOME, outcome.status);
    if (outcome.status === 'dead-lettered') span.setAttribute(ATTR_BUSBAR_DEAD_LETTER_REASON, outcome.reason.kind);
    if (outcome.status === 'settle-failed') span.setStatus({ code: SpanStatusCode.ERROR, message: outcome.error });
    span.end();
    this.#stopIfEmpty();
  }

  /** Ends every waiting span (outcome `unknown`). */
  endAll(): void {
    for (const o of this.#open.values()) end(o.span, 'unknown');
    this.#open.clear();
    this.#stopIfEmpty();
  }

  private sweep(): void {
    const deadline = Date.now() - this.timeoutMs;
    for (const [key, o] of this.#open) {
      if (o.at === undefined || o.at > deadline) continue;
      this.#open.delete(key);
      end(o.span, 'unknown');
    }
    this.#stopIfEmpty();
  }

  #stopIfEmpty(): void {
    if (this.#open.size > 0 || this.#sweeper === undefined) return;
    clearInterval(this.#sweeper);
    this.#sweeper = undefined;
  }
}

function end(span: Span, outcome: string): void {
  span.setAttribute(ATTR_BUSBAR_OUTCOME, outcome);
  span.end();
}
