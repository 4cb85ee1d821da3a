/**
 * The names this package emits. Stable names come from `@opentelemetry/semantic-conventions`; the
 * messaging names are still in development there, so they are pinned here as local constants, as
 * of the semantic conventions version {@link SEMCONV_VERSION} (stated as the tracer's and meter's
 * `schemaUrl`). A later semconv release may rename them (e.g. `messaging.system` →
 * `messaging.system.name`); this package moves with a major version when it follows.
 */
import { ATTR_ERROR_TYPE, ERROR_TYPE_VALUE_OTHER } from '@opentelemetry/semantic-conventions';

export { ATTR_ERROR_TYPE, ERROR_TYPE_VALUE_OTHER };

/** The semantic conventions version whose messaging names this package emits. */
export const SEMCONV_VERSION = '1.38.0';
/** The schema URL of {@link SEMCONV_VERSION}, given to the tracer and the meter. */
export const SCHEMA_URL = `https://opentelemetry.io/schemas/${SEMCONV_VERSION}`;

// ---- messaging attributes (development in semconv) ---------------------------------------------
export const ATTR_MESSAGING_SYSTEM = 'messaging.system';
export const ATTR_MESSAGING_DESTINATION_NAME = 'messaging.destination.name';
export const ATTR_MESSAGING_CONSUMER_GROUP_NAME = 'messaging.consumer.group.name';
export const ATTR_MESSAGING_MESSAGE_ID = 'messaging.message.id';
export const ATTR_MESSAGING_OPERATION_TYPE = 'messaging.operation.type';
export const ATTR_MESSAGING_OPERATION_NAME = 'messaging.operation.name';
export const ATTR_MESSAGING_DESTINATION_PARTITION_ID = 'messaging.destination.partition.id';
export const ATTR_MESSAGING_KAFKA_OFFSET = 'messaging.kafka.offset';
export const ATTR_MESSAGING_KAFKA_MESSAGE_KEY = 'messaging.kafka.message.key';
export const ATTR_MESSAGING_BATCH_MESSAGE_COUNT = 'messaging.batch.message_count';
export const ATTR_CLOUDEVENTS_EVENT_ID = 'cloudevents.event_id';
export const ATTR_CLOUDEVENTS_EVENT_TYPE = 'cloudevents.event_type';
export const ATTR_CLOUDEVENTS_EVENT_SOURCE = 'cloudevents.event_source';

/** `messaging.operation.type` values. */
export const OPERATION_SEND = 'send';
export const OPERATION_PROCESS = 'process';

// ---- messaging metrics (development in semconv) ------------------------------------------------
export const METRIC_SENT_MESSAGES = 'messaging.client.sent.messages';
export const METRIC_CONSUMED_MESSAGES = 'messaging.client.consumed.messages';
export const METRIC_OPERATION_DURATION = 'messaging.client.operation.duration';
export const METRIC_PROCESS_DURATION = 'messaging.process.duration';

// ---- Busbar's own names --------------------------------------------------------------------------
/** 1-based delivery attempt of the message (core's count: the attempt header + broker redeliveries). */
export const ATTR_BUSBAR_ATTEMPT = 'busbar.delivery.attempt';
/** How the delivery was settled: `acked`, `retried`, `dead-lettered`, `duplicate`, `released`, `settle-failed`. */
export const ATTR_BUSBAR_OUTCOME = 'busbar.delivery.outcome';
/** The dead-letter reason kind (`max-attempts`, `schema-invalid`, `handler-requested` …). */
export const ATTR_BUSBAR_DEAD_LETTER_REASON = 'busbar.dead_letter.reason';
/** The circuit breaker state (`closed`, `half-open`, `open`). */
export const ATTR_BUSBAR_BREAKER_STATE = 'busbar.breaker.state';

export const METRIC_OUTCOMES = 'busbar.delivery.outcomes';
export const METRIC_RETRIES = 'busbar.message.retries';
export const METRIC_DEAD_LETTERS = 'busbar.message.dead_letters';
export const METRIC_DUPLICATES = 'busbar.message.duplicates';
export const METRIC_IN_FLIGHT = 'busbar.deliveries.in_flight';
export const METRIC_PENDING_PUBLISHES = 'busbar.publish.pending';
export const METRIC_BREAKER_STATE = 'busbar.breaker.state';
export const METRIC_BREAKER_TRANSITIONS = 'busbar.breaker.transitions';
export const METRIC_GROUP_BACKLOG = 'busbar.group.backlog';
export const METRIC_GROUP_IN_FLIGHT = 'busbar.group.in_flight';
export const METRIC_GROUP_RETRYING = 'busbar.group.retrying';
export const METRIC_GROUP_DEAD_LETTERS = 'busbar.group.dead_letters';

/**
 * `messaging.system` of each Busbar transport: the semconv value where the conventions name the
 * broker (`rabbitmq`, `kafka`), a custom one otherwise — `redis.streams` for Redis Streams,
 * `busbar.memory` for the in-memory transport. Any other transport reports its own `name`.
 */
export function messagingSystemOf(transportName: string): string {
  switch (transportName) {
    case 'rabbitmq':
      return 'rabbitmq';
    case 'kafka':
      return 'kafka';
    case 'redis-streams':
      return 'redis.streams';
    case 'memory':
      return 'busbar.memory';
    default:
      return transportName;
  }
}
