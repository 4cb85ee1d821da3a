/**
 * Header keys of the Busbar wire format.
 *
 * Every message Busbar writes is a CloudEvents 1.0 event, by default in **binary content mode**:
 * the body is the event data byte-for-byte, the attributes travel as headers. With
 * `BusOptions.contentMode: 'structured'` the body is the JSON event envelope instead
 * (`content-type` {@link STRUCTURED_CONTENT_TYPE}); consumers read both modes, and a structured
 * event's envelope wins over the headers it may also carry. Core uses the Kafka protocol binding's naming
 * (`ce_<attribute>`, `content-type` for `datacontenttype`) as its canonical form; a transport whose
 * broker has its own binding (AMQP: `cloudEvents_` application properties) maps these names at
 * its edge and back.
 *
 * Extension attribute names follow the CloudEvents rules (lower-case letters and digits).
 */
export const HeaderNames = {
  /** CloudEvents `id`: unique per published message (a UUID). */
  id: 'ce_id',
  /** CloudEvents `source`: URI-reference of the producing service (`BusOptions.source`). */
  source: 'ce_source',
  /** CloudEvents `specversion`: always `1.0`. */
  specversion: 'ce_specversion',
  /** CloudEvents `type`: the event type, e.g. `user.created`. */
  type: 'ce_type',
  /** CloudEvents `time`: RFC 3339 publish time. */
  time: 'ce_time',
  /** CloudEvents `dataschema`: `urn:busbar:<type>:v<version>`. */
  dataschema: 'ce_dataschema',
  /** CloudEvents `datacontenttype` (Kafka binding: the `content-type` header). */
  contentType: 'content-type',
  /** Extension: the schema version of the data (integer ≥ 1). */
  eventVersion: 'ce_eventversion',
  /** Extension: the idempotency key; defaults to the message id. */
  idempotencyKey: 'ce_idempotencykey',
  /** Extension: the partition / ordering key, when given. */
  partitionKey: 'ce_partitionkey',
  /** Extension (W3C trace context). */
  traceparent: 'ce_traceparent',
  /** Extension (W3C trace context). */
  tracestate: 'ce_tracestate',
  /** Extension: the delivery attempt this copy represents (1 on first delivery). */
  attempt: 'ce_busbarattempt',
  /** Extension, on retries: epoch ms at which the first failure happened. */
  firstFailure: 'ce_busbarfirstfailure',
  /** Dead letters: the {@link DeadLetterReason} kind. */
  deadLetterReason: 'ce_busbardlreason',
  /** Dead letters: a credential-free description of the error. */
  deadLetterError: 'ce_busbardlerror',
  /** Dead letters: RFC 3339 time of the first failure. */
  deadLetterFirstFailure: 'ce_busbardlfirstfailure',
  /** Dead letters: RFC 3339 time of the last failure (when it was dead-lettered). */
  deadLetterLastFailure: 'ce_busbardllastfailure',
  /** Dead letters: attempts made before dead-lettering. */
  deadLetterAttempts: 'ce_busbardlattempts',
  /** Dead letters: the original destination (topic / stream / exchange+routing key). */
  deadLetterOrigin: 'ce_busbardlorigin',
  /** Dead letters: broker position of the original (partition/offset, stream id …), if any. */
  deadLetterPosition: 'ce_busbardlposition',
  /** Dead letters: the consumer group that failed. */
  deadLetterGroup: 'ce_busbardlgroup',
  /** Replays: how many times this message was replayed from the dead letters. */
  replayCount: 'ce_busbarreplays',
} as const;

/**
 * @deprecated Renamed to {@link HeaderNames} (`Headers` shadows the global WHATWG `Headers`
 * class). This alias will be removed in a later release.
 */
export const Headers = HeaderNames;

/** The union of the header keys above. */
export type HeaderKey = (typeof HeaderNames)[keyof typeof HeaderNames];

/** Content type Busbar writes (`datacontenttype`). */
export const JSON_CONTENT_TYPE = 'application/json';

/**
 * Content type Busbar writes for a structured event (CloudEvents JSON event format). Any
 * `application/cloudevents+json` (any parameters, any case) is read as structured.
 */
export const STRUCTURED_CONTENT_TYPE = 'application/cloudevents+json; charset=utf-8';

/** CloudEvents spec version Busbar writes and accepts. */
export const SPEC_VERSION = '1.0';

/** Prefix reserved for CloudEvents attributes; user headers may not start with it. */
export const RESERVED_HEADER_PREFIX = 'ce_';

/** Headers added when a message is dead-lettered; removed again on replay. */
export const DEAD_LETTER_HEADERS: readonly string[] = [
  HeaderNames.deadLetterReason,
  HeaderNames.deadLetterError,
  HeaderNames.deadLetterFirstFailure,
  HeaderNames.deadLetterLastFailure,
  HeaderNames.deadLetterAttempts,
  HeaderNames.deadLetterOrigin,
  HeaderNames.deadLetterPosition,
  HeaderNames.deadLetterGroup,
];
