/**
 * The metric instruments, created once per {@link busbarTelemetry} from its meter, and the
 * attribute sets they are recorded with (cached per destination, group, outcome and error type: no
 * object per message).
 *
 * Counters are counted here, per attribute set, and reported by asynchronous (observable)
 * instruments at each collection: the SDK hashes the attributes of every synchronous recording,
 * which would cost more than the rest of the telemetry. The two duration histograms are recorded
 * synchronously (the API has no asynchronous histogram).
 */
import type {
  Attributes,
  BatchObservableResult,
  Histogram,
  Meter,
  Observable,
  ObservableCounter,
  ObservableUpDownCounter,
} from '@opentelemetry/api';
import {
  ATTR_BUSBAR_DEAD_LETTER_REASON,
  ATTR_BUSBAR_OUTCOME,
  ATTR_ERROR_TYPE,
  ATTR_MESSAGING_CONSUMER_GROUP_NAME,
  ATTR_MESSAGING_DESTINATION_NAME,
  ATTR_MESSAGING_OPERATION_NAME,
  ATTR_MESSAGING_OPERATION_TYPE,
  ATTR_MESSAGING_SYSTEM,
  METRIC_CONSUMED_MESSAGES,
  METRIC_DEAD_LETTERS,
  METRIC_DUPLICATES,
  METRIC_IN_FLIGHT,
  METRIC_OPERATION_DURATION,
  METRIC_OUTCOMES,
  METRIC_PROCESS_DURATION,
  METRIC_RETRIES,
  METRIC_SENT_MESSAGES,
  OPERATION_PROCESS,
  OPERATION_SEND,
} from './semconv.js';

/** Bucket boundaries for the two duration histograms, seconds (semconv's advice for messaging). */
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10];

/** A count per attribute set (keyed by identity: the sets come from {@link AttributeCache}). */
export class Tally {
  readonly #counts = new Map<Attributes, number>();

  constructor(readonly instrument: ObservableCounter | ObservableUpDownCounter) {}

  add(attributes: Attributes, n = 1): void {
    this.#counts.set(attributes, (this.#counts.get(attributes) ?? 0) + n);
  }

  observe(result: BatchObservableResult): void {
    for (const [attributes, n] of this.#counts) result.observe(this.instrument, n, attributes);
  }
}

/** The instruments. */
export interface Instruments {
  readonly sent: Tally;
  readonly consumed: Tally;
  readonly outcomes: Tally;
  readonly retries: Tally;
  readonly deadLetters: Tally;
  readonly duplicates: Tally;
  readonly inFlight: Tally;
  readonly operationDuration: Histogram;
  readonly processDuration: Histogram;
}

export function createInstruments(meter: Meter): Instruments {
  const messages = { unit: '{message}' };
  const counter = (name: string, description: string) => new Tally(meter.createObservableCounter(name, { ...messages, description }));
  const instruments: Instruments = {
    sent: counter(METRIC_SENT_MESSAGES, 'Number of messages the producer attempted to send to the broker.'),
    consumed: counter(METRIC_CONSUMED_MESSAGES, 'Number of messages delivered to a handler.'),
    outcomes: counter(METRIC_OUTCOMES, 'Deliveries settled, by outcome.'),
    retries: counter(METRIC_RETRIES, 'Deliveries scheduled for a retry.'),
    deadLetters: counter(METRIC_DEAD_LETTERS, 'Messages dead-lettered, by reason.'),
    duplicates: counter(METRIC_DUPLICATES, 'Deliveries absorbed by the idempotency store.'),
    inFlight: new Tally(meter.createObservableUpDownCounter(METRIC_IN_FLIGHT, { ...messages, description: 'Handler runs in progress.' })),
    operationDuration: meter.createHistogram(METRIC_OPERATION_DURATION, {
      unit: 's',
      description: 'Duration of a publish, from the call until the broker confirmed it (or it failed).',
      advice: { explicitBucketBoundaries: DURATION_BUCKETS },
    }),
    processDuration: meter.createHistogram(METRIC_PROCESS_DURATION, {
      unit: 's',
      description: 'Duration of a handler run.',
      advice: { explicitBucketBoundaries: DURATION_BUCKETS },
    }),
  };
  const tallies = [
    instruments.sent,
    instruments.consumed,
    instruments.outcomes,
    instruments.retries,
    instruments.deadLetters,
    instruments.duplicates,
    instruments.inFlight,
  ];
  meter.addBatchObservableCallback(
    (result) => {
      for (const t of tallies) t.observe(result);
    },
    tallies.map((t) => t.instrument as Observable),
  );
  return instruments;
}

/** Frozen attribute sets, one per (system, destination[, group][, outcome | error type]). */
export class AttributeCache {
  readonly #send = new Map<string, Attributes>();
  readonly #process = new Map<string, Attributes>();
  readonly #derived = new WeakMap<Attributes, Map<string, Attributes>>();

  /** `{ system, destination, operation send }`. */
  send(system: string, topic: string): Attributes {
    const key = `${system}\u0000${topic}`;
    let a = this.#send.get(key);
    if (a === undefined) {
      a = Object.freeze({
        [ATTR_MESSAGING_SYSTEM]: system,
        [ATTR_MESSAGING_DESTINATION_NAME]: topic,
        [ATTR_MESSAGING_OPERATION_TYPE]: OPERATION_SEND,
        [ATTR_MESSAGING_OPERATION_NAME]: OPERATION_SEND,
      });
      this.#send.set(key, a);
    }
    return a;
  }

  /** `{ system, destination, consumer group, operation process }`. */
  process(system: string, topic: string, group: string): Attributes {
    const key = `${system}\u0000${topic}\u0000${group}`;
    let a = this.#process.get(key);
    if (a === undefined) {
      a = Object.freeze({
        [ATTR_MESSAGING_SYSTEM]: system,
        [ATTR_MESSAGING_DESTINATION_NAME]: topic,
        [ATTR_MESSAGING_CONSUMER_GROUP_NAME]: group,
        [ATTR_MESSAGING_OPERATION_TYPE]: OPERATION_PROCESS,
        [ATTR_MESSAGING_OPERATION_NAME]: OPERATION_PROCESS,
      });
      this.#process.set(key, a);
    }
    return a;
  }

  /** `base` plus `error.type`. */
  withError(base: Attributes, type: string): Attributes {
    return derive(this.#derived, base, `e\u0000${type}`, () => ({ [ATTR_ERROR_TYPE]: type }));
  }

  /** `base` plus `busbar.delivery.outcome` (and the dead-letter reason). */
  withOutcome(base: Attributes, outcome: string, reason: string | undefined): Attributes {
    return derive(this.#derived, base, `o\u0000${outcome}\u0000${reason ?? ''}`, () =>
      reason === undefined
        ? { [ATTR_BUSBAR_OUTCOME]: outcome }
        : { [ATTR_BUSBAR_OUTCOME]: outcome, [ATTR_BUSBAR_DEAD_LETTER_REASON]: reason },
    );
  }

  /** `base` plus the dead-letter reason. */
  withReason(base: Attributes, reason: string): Attributes {
    return derive(this.#derived, base, `r\u0000${reason}`, () => ({ [ATTR_BUSBAR_DEAD_LETTER_REASON]: reason }));
  }
}

/** Extends a cached set: `base` plus `extra`, cached under `key`. */
function derive(cache: WeakMap<Attributes, Map<string, Attributes>>, base: Attributes, key: string, extra: () => Attributes): Attributes {
  let byKey = cache.get(base);
  if (byKey === undefined) {
    byKey = new Map();
    cache.set(base, byKey);
  }
  let a = byKey.get(key);
  if (a === undefined) {
    a = Object.freeze({ ...base, ...extra() });
    byKey.set(key, a);
  }
  return a;
}

/** `error.type` of a thrown value: a `BusError`'s `code`, else the error's `name`, else `_OTHER`. */
export function errorType(error: unknown): string {
  if (error !== null && typeof error === 'object') {
    const code = (error as { code?: unknown }).code;
    if (typeof code === 'string' && code.length > 0 && code.length <= 64) return code;
    const name = (error as { name?: unknown }).name;
    if (typeof name === 'string' && name.length > 0 && name.length <= 64) return name;
  }
  return '_OTHER';
}
