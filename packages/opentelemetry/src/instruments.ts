/**
 * The metric instruments, created once per {@link busbarTelemetry} from its meter, and the
 * attribute sets they are recorded with (cached per destination and group: no object per message).
 */
import type { Attributes, Counter, Histogram, Meter, UpDownCounter } from '@opentelemetry/api';
import {
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

/** The synchronous instruments. */
export interface Instruments {
  readonly sent: Counter;
  readonly consumed: Counter;
  readonly operationDuration: Histogram;
  readonly processDuration: Histogram;
  readonly outcomes: Counter;
  readonly retries: Counter;
  readonly deadLetters: Counter;
  readonly duplicates: Counter;
  readonly inFlight: UpDownCounter;
}

export function createInstruments(meter: Meter): Instruments {
  const messages = { unit: '{message}' };
  return {
    sent: meter.createCounter(METRIC_SENT_MESSAGES, {
      ...messages,
      description: 'Number of messages the producer attempted to send to the broker.',
    }),
    consumed: meter.createCounter(METRIC_CONSUMED_MESSAGES, { ...messages, description: 'Number of messages delivered to a handler.' }),
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
    outcomes: meter.createCounter(METRIC_OUTCOMES, { ...messages, description: 'Deliveries settled, by outcome.' }),
    retries: meter.createCounter(METRIC_RETRIES, { ...messages, description: 'Deliveries scheduled for a retry.' }),
    deadLetters: meter.createCounter(METRIC_DEAD_LETTERS, { ...messages, description: 'Messages dead-lettered, by reason.' }),
    duplicates: meter.createCounter(METRIC_DUPLICATES, { ...messages, description: 'Deliveries absorbed by the idempotency store.' }),
    inFlight: meter.createUpDownCounter(METRIC_IN_FLIGHT, { ...messages, description: 'Handler runs in progress.' }),
  };
}

/** Frozen attribute sets, one per (system, destination[, group]). */
export class AttributeCache {
  readonly #send = new Map<string, Attributes>();
  readonly #process = new Map<string, Attributes>();

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
