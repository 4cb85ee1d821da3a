/**
 * What the meter observes on each attached bus: pending publishes and the breaker state (read from
 * `bus.health()` at each collection), breaker transitions (the `breaker` event), and — only when
 * `options.backlog` asks for it — each group's backlog, in-flight, retrying and dead-letter counts,
 * from `bus.describeGroups(event)` polled every `backlog.intervalMs` (the last answer is what a
 * collection reports; a failed poll reports nothing for that event until the next one answers).
 */
import type { EventBus, EventDefinition } from '@busbar/core';
import type { Attributes, Counter, Meter, ObservableGauge } from '@opentelemetry/api';
import type { BacklogOptions } from './options.js';
import {
  ATTR_BUSBAR_BREAKER_STATE,
  ATTR_MESSAGING_CONSUMER_GROUP_NAME,
  ATTR_MESSAGING_DESTINATION_NAME,
  ATTR_MESSAGING_SYSTEM,
  METRIC_BREAKER_STATE,
  METRIC_BREAKER_TRANSITIONS,
  METRIC_GROUP_BACKLOG,
  METRIC_GROUP_DEAD_LETTERS,
  METRIC_GROUP_IN_FLIGHT,
  METRIC_GROUP_RETRYING,
  METRIC_PENDING_PUBLISHES,
} from './semconv.js';

/** `busbar.breaker.state` values. */
const BREAKER_CODES: Readonly<Record<string, number>> = { closed: 0, 'half-open': 1, open: 2 };

/** One group as last described: the counts the transport could tell. */
interface GroupCounts {
  readonly attributes: Attributes;
  readonly backlog?: number | undefined;
  readonly inFlight?: number | undefined;
  readonly retrying?: number | undefined;
  readonly deadLetters?: number | undefined;
}

interface Watched {
  readonly attributes: Attributes;
  /** Last answer per event type. */
  readonly groups: Map<string, readonly GroupCounts[]>;
}

interface BacklogGauges {
  readonly backlog: ObservableGauge;
  readonly inFlight: ObservableGauge;
  readonly retrying: ObservableGauge;
  readonly deadLetters: ObservableGauge;
}

export class BusGauges {
  readonly #watched = new Map<EventBus, Watched>();
  readonly #transitions: Counter;
  readonly #backlog: BacklogGauges | undefined;
  readonly #intervalMs: number;

  constructor(
    meter: Meter,
    private readonly backlogOptions: BacklogOptions | undefined,
    private readonly systemOf: (bus: EventBus) => string,
  ) {
    const pending = meter.createObservableGauge(METRIC_PENDING_PUBLISHES, {
      unit: '{message}',
      description: 'Publishes waiting for the broker to confirm them.',
    });
    const breaker = meter.createObservableGauge(METRIC_BREAKER_STATE, {
      unit: '1',
      description: 'Circuit breaker state: 0 closed, 1 half-open, 2 open (absent when the breaker is disabled).',
    });
    this.#transitions = meter.createCounter(METRIC_BREAKER_TRANSITIONS, {
      unit: '{transition}',
      description: 'Circuit breaker state changes, by the state entered.',
    });
    const observables: ObservableGauge[] = [pending, breaker];
    this.#intervalMs = backlogOptions?.intervalMs ?? 15_000;
    if (!Number.isFinite(this.#intervalMs) || this.#intervalMs <= 0) {
      throw new RangeError(`backlog.intervalMs must be a positive number, got ${this.#intervalMs}`);
    }
    if (backlogOptions !== undefined) {
      const messages = { unit: '{message}' };
      this.#backlog = {
        backlog: meter.createObservableGauge(METRIC_GROUP_BACKLOG, {
          ...messages,
          description: 'Messages waiting for the group, not yet handed out.',
        }),
        inFlight: meter.createObservableGauge(METRIC_GROUP_IN_FLIGHT, {
          ...messages,
          description: 'Messages handed out to the group, not settled.',
        }),
        retrying: meter.createObservableGauge(METRIC_GROUP_RETRYING, {
          ...messages,
          description: "Messages waiting in the group's retry path.",
        }),
        deadLetters: meter.createObservableGauge(METRIC_GROUP_DEAD_LETTERS, {
          ...messages,
          description: "Messages in the group's dead letters.",
        }),
      };
      observables.push(this.#backlog.backlog, this.#backlog.inFlight, this.#backlog.retrying, this.#backlog.deadLetters);
    }
    meter.addBatchObservableCallback((result) => {
      for (const [bus, w] of this.#watched) {
        const health = bus.health();
        result.observe(pending, health.pendingPublishes, w.attributes);
        const code = BREAKER_CODES[health.breaker];
        if (code !== undefined) result.observe(breaker, code, w.attributes);
        const g = this.#backlog;
        if (g === undefined) continue;
        for (const groups of w.groups.values()) {
          for (const c of groups) {
            if (c.backlog !== undefined) result.observe(g.backlog, c.backlog, c.attributes);
            if (c.inFlight !== undefined) result.observe(g.inFlight, c.inFlight, c.attributes);
            if (c.retrying !== undefined) result.observe(g.retrying, c.retrying, c.attributes);
            if (c.deadLetters !== undefined) result.observe(g.deadLetters, c.deadLetters, c.attributes);
          }
        }
      }
    }, observables);
  }

  /** Starts observing `bus`; returns the function that stops. */
  watch(bus: EventBus): () => void {
    const system = this.systemOf(bus);
    const w: Watched = { attributes: Object.freeze({ [ATTR_MESSAGING_SYSTEM]: system }), groups: new Map() };
    this.#watched.set(bus, w);
    const onBreaker = (state: string) => this.#transitions.add(1, { [ATTR_MESSAGING_SYSTEM]: system, [ATTR_BUSBAR_BREAKER_STATE]: state });
    bus.on('breaker', onBreaker);
    let timer: NodeJS.Timeout | undefined;
    const events = this.backlogOptions?.events ?? [];
    if (events.length > 0) {
      let polling = false;
      const poll = () => {
        if (polling) return;
        if (bus.health().transport.state === 'closed') {
          stop();
          return;
        }
        polling = true;
        void Promise.all(events.map((event) => this.describe(bus, system, event, w))).finally(() => {
          polling = false;
        });
      };
      timer = setInterval(poll, this.#intervalMs);
      timer.unref();
      poll();
    }
    const stop = () => {
      if (timer !== undefined) clearInterval(timer);
      timer = undefined;
      bus.off('breaker', onBreaker);
      this.#watched.delete(bus);
    };
    return stop;
  }

  /** Polls the groups of one event now (also for tests: `await telemetry` is not needed). */
  private async describe(bus: EventBus, system: string, event: EventDefinition, w: Watched): Promise<void> {
    try {
      const topic = bus.topicOf(event);
      const groups = await bus.describeGroups(event);
      w.groups.set(
        event.type,
        groups.map((g) => ({
          attributes: Object.freeze({
            [ATTR_MESSAGING_SYSTEM]: system,
            [ATTR_MESSAGING_DESTINATION_NAME]: topic,
            [ATTR_MESSAGING_CONSUMER_GROUP_NAME]: g.group,
          }),
          backlog: g.backlog,
          inFlight: g.inFlight,
          retrying: g.retrying,
          deadLetters: g.deadLetters,
        })),
      );
    } catch {
      w.groups.delete(event.type);
    }
  }
}
