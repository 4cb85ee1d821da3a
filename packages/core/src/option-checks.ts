/**
 * Run-time checks of what a JavaScript caller (no type checker) can get wrong in the options of
 * the bus, of a publish and of a subscription: each mistake is a `ConfigError` naming the option
 * (`subscribe(E, {} as any, h)` must not create a group named "undefined").
 */
import { ConfigError } from './errors.js';
import type { EventDefinition } from './event.js';
import type { BusOptions, PublishOptions, RetryPolicy, SubscribeOptions } from './options.js';

type Bag = Record<string, unknown>;

/** `String(value)`, short, for messages (never the value of a secret: options hold none). */
function show(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value);
  if (typeof value === 'function') return 'a function';
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  return String(value);
}

function fail(name: string, expected: string, value: unknown): never {
  throw new ConfigError(`${name} must be ${expected}, got ${show(value)}`);
}

/** Throws unless `value` is a plain object (not null, not an array). */
export function checkObject(value: unknown, name: string): asserts value is Bag {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(name, 'an object', value);
}

/** Throws unless `value` is `undefined` or a number in `[min, max]` (an integer when asked). */
export function checkNumber(
  value: unknown,
  name: string,
  options: { min?: number; max?: number; integer?: boolean; above?: number } = {},
): void {
  if (value === undefined) return;
  const { min, max, integer, above } = options;
  const expected = [
    integer ? 'an integer' : 'a finite number',
    above !== undefined ? `> ${above}` : '',
    min !== undefined ? `≥ ${min}` : '',
    max !== undefined ? `≤ ${max}` : '',
  ]
    .filter(Boolean)
    .join(' ');
  if (typeof value !== 'number' || !Number.isFinite(value)) fail(name, expected, value);
  if (integer && !Number.isInteger(value)) fail(name, expected, value);
  if ((above !== undefined && value <= above) || (min !== undefined && value < min) || (max !== undefined && value > max)) {
    fail(name, expected, value);
  }
}

/** Throws unless `value` is `undefined` or one of `allowed`. */
export function checkOneOf(value: unknown, name: string, allowed: readonly unknown[]): void {
  if (value === undefined || allowed.includes(value)) return;
  fail(name, `one of ${allowed.map(show).join(', ')}`, value);
}

/** Throws unless `value` is `undefined` or of `typeof` `type`. */
export function checkType(value: unknown, name: string, type: 'string' | 'function' | 'boolean'): void {
  if (value === undefined || typeof value === type) return;
  fail(name, type === 'function' ? 'a function' : `a ${type}`, value);
}

/** Throws unless `event` is an event definition (`defineEvent(…)`). */
export function checkEvent(event: unknown, where: string): asserts event is EventDefinition {
  const e = event as Partial<EventDefinition> | null | undefined;
  if (typeof e !== 'object' || e === null || typeof e.type !== 'string' || typeof e.schema?.safeParse !== 'function') {
    throw new ConfigError(`${where}: the event must be an event definition made by defineEvent(), got ${show(event)}`);
  }
}

/** Checks a retry policy (`retry` of the bus or of a subscription). */
export function checkRetryPolicy(retry: RetryPolicy | undefined, name: string): void {
  if (retry === undefined) return;
  checkObject(retry, name);
  checkNumber(retry.maxAttempts, `${name}.maxAttempts`, { integer: true, min: 1 });
  const backoff = retry.backoff;
  if (backoff === undefined) return;
  checkObject(backoff, `${name}.backoff`);
  checkNumber(backoff.initialMs, `${name}.backoff.initialMs`, { min: 0 });
  checkNumber(backoff.multiplier, `${name}.backoff.multiplier`, { min: 1 });
  checkNumber(backoff.maxMs, `${name}.backoff.maxMs`, { min: 0 });
  checkNumber(backoff.minMs, `${name}.backoff.minMs`, { min: 0 });
  checkOneOf(backoff.jitter, `${name}.backoff.jitter`, ['full', 'none']);
}

const TRANSPORT_METHODS = ['connect', 'publish', 'subscribe', 'processDeadLetters', 'health', 'close'] as const;
const LOGGER_METHODS = ['debug', 'info', 'warn', 'error'] as const;

/** Checks the options of `new EventBus(options)` (the numbers are checked where they are read). */
export function checkBusOptions(options: BusOptions): void {
  checkObject(options, 'EventBus options');
  const transport = options.transport as unknown as Bag | undefined;
  if (transport === undefined) throw new ConfigError('EventBus options: transport is required (e.g. memoryTransport())');
  checkObject(transport, 'transport');
  for (const m of TRANSPORT_METHODS) if (typeof transport[m] !== 'function') fail(`transport.${m}`, 'a function', transport[m]);
  if (typeof transport.name !== 'string') fail('transport.name', 'a string', transport.name);
  checkObject(transport.capabilities, 'transport.capabilities');
  checkType(options.source, 'source', 'string');
  if (options.source === '') fail('source', 'a non-empty string', '');
  checkType(options.namespace, 'namespace', 'string');
  if (options.logger !== undefined) {
    checkObject(options.logger, 'logger');
    for (const m of LOGGER_METHODS) {
      if (typeof (options.logger as unknown as Bag)[m] !== 'function')
        fail(`logger.${m}`, 'a function', (options.logger as unknown as Bag)[m]);
    }
  }
  checkType(options.random, 'random', 'function');
  if (options.clock !== undefined) {
    checkObject(options.clock, 'clock');
    if (typeof options.clock.now !== 'function') fail('clock.now', 'a function', options.clock.now);
    if (typeof options.clock.setTimer !== 'function') fail('clock.setTimer', 'a function', options.clock.setTimer);
  }
  checkOneOf(options.publishOverflow, 'publishOverflow', ['wait', 'reject']);
  if (options.interceptors !== undefined) {
    checkObject(options.interceptors, 'interceptors');
    for (const kind of ['publish', 'handle'] as const) {
      const list = options.interceptors[kind] as unknown;
      if (list === undefined) continue;
      if (!Array.isArray(list)) fail(`interceptors.${kind}`, 'an array of functions', list);
      list.forEach((f: unknown, i) => {
        if (typeof f !== 'function') fail(`interceptors.${kind}[${i}]`, 'a function', f);
      });
    }
  }
  if (options.batching !== undefined) {
    checkObject(options.batching, 'batching');
    checkNumber(options.batching.maxBatchSize, 'batching.maxBatchSize', { integer: true, min: 1 });
    checkNumber(options.batching.maxInFlightBatches, 'batching.maxInFlightBatches', { integer: true, min: 1 });
  }
  if (options.breaker !== undefined && options.breaker !== false) {
    checkObject(options.breaker, 'breaker');
    checkNumber(options.breaker.failureThreshold, 'breaker.failureThreshold', { integer: true, min: 1 });
    checkNumber(options.breaker.recoveryTimeoutMs, 'breaker.recoveryTimeoutMs', { min: 0 });
    checkType(options.breaker.isFailure, 'breaker.isFailure', 'function');
    checkType(options.breaker.onStateChange, 'breaker.onStateChange', 'function');
  }
  if (options.idempotency !== undefined) {
    checkObject(options.idempotency, 'idempotency');
    const store = options.idempotency.store as unknown as Bag | undefined;
    checkObject(store, 'idempotency.store');
    for (const m of ['claim', 'complete', 'release']) {
      if (typeof store[m] !== 'function') fail(`idempotency.store.${m}`, 'a function', store[m]);
    }
    checkNumber(options.idempotency.ttlMs, 'idempotency.ttlMs', { above: 0 });
    checkNumber(options.idempotency.leaseMs, 'idempotency.leaseMs', { above: 0 });
  }
  checkRetryPolicy(options.retry, 'retry');
  checkNumber(options.closeTimeoutMs, 'closeTimeoutMs', { min: 0 });
}

/** Checks the arguments of `bus.subscribe(event, options, handler)` (group and concurrency: see the bus). */
export function checkSubscribeArguments(event: unknown, options: SubscribeOptions, handler: unknown): void {
  checkEvent(event, 'subscribe(event, options, handler)');
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new ConfigError(`subscribe(event, options, handler): options must be an object with a group, got ${show(options)}`);
  }
  if (typeof handler !== 'function') fail('subscribe(event, options, handler): handler', 'a function', handler);
  if ((options as unknown as Bag).group === undefined) {
    throw new ConfigError('subscribe(event, options, handler): options.group is required (the consumer group name)');
  }
  if (typeof options.group !== 'string') fail('options.group', 'a string', options.group);
  checkNumber(options.concurrency, 'options.concurrency', { integer: true, min: 1, max: 10_000 });
  checkRetryPolicy(options.retry, 'options.retry');
  const signal = options.signal as unknown;
  if (signal !== undefined && !(signal instanceof AbortSignal)) fail('options.signal', 'an AbortSignal', signal);
  checkOneOf(options.startFrom, 'options.startFrom', ['latest', 'earliest']);
  checkOneOf(options.ordering, 'options.ordering', ['none', 'key']);
  checkNumber(options.handlerTimeoutMs, 'options.handlerTimeoutMs', { above: 0 });
  if (options.upcasters !== undefined) {
    checkObject(options.upcasters, 'options.upcasters');
    for (const [version, upcaster] of Object.entries(options.upcasters)) {
      if (!/^[1-9]\d*$/.test(version)) fail('options.upcasters keys', 'event versions (integers ≥ 1)', version);
      checkType(upcaster, `options.upcasters[${version}]`, 'function');
    }
  }
  checkType(options.idempotent, 'options.idempotent', 'boolean');
}

/**
 * Checks the publish options a type checker would have caught (the key, idempotency key and
 * headers are validated by the encoder, as `ValidationError`).
 */
export function checkPublishOptions(options: PublishOptions): void {
  if (typeof options !== 'object' || options === null || Array.isArray(options)) fail('publish options', 'an object', options);
  checkNumber(options.timeoutMs, 'publish options.timeoutMs', { above: 0 });
  if (options.id !== undefined && (typeof options.id !== 'string' || options.id === '')) {
    fail('publish options.id', 'a non-empty string', options.id);
  }
  checkType(options.traceparent, 'publish options.traceparent', 'string');
  checkType(options.tracestate, 'publish options.tracestate', 'string');
  if (options.headers !== undefined) checkObject(options.headers, 'publish options.headers');
}
