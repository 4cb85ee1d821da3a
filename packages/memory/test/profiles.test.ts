// Broker profiles (`like`): memory refuses what each broker refuses, and declares what it declares.
import {
  CapabilityError,
  ConfigError,
  defineEvent,
  EventBus,
  OutcomeSpy,
  PublishRejectedError,
  type TransportCapabilities,
} from '@busbar/core';
import { KafkaTransport } from '@busbar/kafka';
import {
  ManualClock,
  MEMORY_PROFILES,
  MemoryBroker,
  type MemoryProfileName,
  MemoryTransport,
  RABBITMQ_DELAY_TIERS_MS,
} from '@busbar/memory';
import { AMQP_CE_PREFIX, DEFAULT_DELAY_TIERS_MS, RabbitMqTransport } from '@busbar/rabbitmq';
import { REDIS_STREAMS_CAPABILITIES } from '@busbar/redis-streams';
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { deferred, Placed } from './helpers.js';

const open: EventBus[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((bus) => bus.close({ timeoutMs: 50 })));
});

function busLike(
  like: MemoryProfileName,
  options: { broker?: MemoryBroker; clock?: ManualClock; maxPayloadBytes?: number; namespace?: string } = {},
) {
  const transport = new MemoryTransport({ like, broker: options.broker ?? new MemoryBroker(), clock: options.clock });
  const bus = new EventBus({
    transport,
    maxPayloadBytes: options.maxPayloadBytes,
    namespace: options.namespace,
    retry: { maxAttempts: 3, backoff: { initialMs: 30, minMs: 30, maxMs: 30, multiplier: 1 } },
    random: () => 1,
  });
  open.push(bus);
  return { bus, transport, spy: new OutcomeSpy(bus) };
}

/** Capabilities as compared across transports: durability is the memory transport's own; publish-call ordering is a throughput hint. */
function declared(c: TransportCapabilities) {
  const { durability: _d, orderedPublishCalls: _o, namePattern, ...rest } = c;
  return { ...rest, namePattern: namePattern.source };
}

describe('memory broker profiles', () => {
  it('declare the capabilities the broker transports declare', async () => {
    const rabbit = new RabbitMqTransport({ url: 'amqp://127.0.0.1:1' });
    const kafka = new KafkaTransport({ brokers: ['127.0.0.1:1'] });
    expect(declared(new MemoryTransport({ like: 'rabbitmq' }).capabilities)).toEqual(declared(rabbit.capabilities));
    expect(declared(new MemoryTransport({ like: 'kafka' }).capabilities)).toEqual(declared(kafka.capabilities));
    expect(declared(new MemoryTransport({ like: 'redis-streams' }).capabilities)).toEqual(declared(REDIS_STREAMS_CAPABILITIES));
    expect(RABBITMQ_DELAY_TIERS_MS).toEqual(DEFAULT_DELAY_TIERS_MS);
    expect(new MemoryTransport({ like: 'rabbitmq' }).attributePrefix).toBe(AMQP_CE_PREFIX);
    await Promise.all([rabbit.close(), kafka.close()]);
  });

  it('keep the default profile as it was', () => {
    const t = new MemoryTransport();
    expect(t.capabilities).toMatchObject({
      orderedByKey: true,
      newGroupFromEarliest: true,
      maxRetryDelayMs: 86_400_000,
      maxNameLength: 255,
    });
    expect(t.attributePrefix).toBeUndefined();
    expect(MEMORY_PROFILES.memory.refusesUnroutable).toBe(false);
  });

  it("like 'rabbitmq' refuses a publish before any group subscribed, as RabbitMQ returns it unroutable", async () => {
    const { bus } = busLike('rabbitmq');
    const early = bus.publish(Placed, { n: 1 });
    await expect(early).rejects.toBeInstanceOf(PublishRejectedError);
    await expect(early).rejects.toThrow(/no queue is bound to exchange "order\.placed".*subscribe a group first/);
    const got = deferred<number>();
    const sub = await bus.subscribe(Placed, { group: 'g' }, (d) => got.resolve(d.n));
    await bus.publish(Placed, { n: 2 });
    expect(await got.promise).toBe(2);
    await sub.close();
    // The group's queue is durable: with no member connected, publishes are still routed to it.
    await expect(bus.publish(Placed, { n: 3 })).resolves.toMatchObject({ id: expect.any(String) });
  });

  it.each(['memory', 'redis-streams', 'kafka'] as const)("like '%s' keeps a publish made before any group subscribed", async (like) => {
    const { bus } = busLike(like);
    await bus.publish(Placed, { n: 1 });
    const got = deferred<number>();
    await bus.subscribe(Placed, { group: 'g', startFrom: 'earliest' }, (d) => got.resolve(d.n));
    expect(await got.promise).toBe(1);
  });

  it("like 'rabbitmq' refuses startFrom 'earliest' and ordering by key, as the RabbitMQ transport does", async () => {
    const { bus } = busLike('rabbitmq');
    await expect(bus.subscribe(Placed, { group: 'a', startFrom: 'earliest' }, () => {})).rejects.toBeInstanceOf(CapabilityError);
    await expect(bus.subscribe(Placed, { group: 'b', ordering: 'key' }, () => {})).rejects.toMatchObject({ capability: 'orderedByKey' });
  });

  it("like 'redis-streams' refuses ordering by key and offers lease extension", async () => {
    const { bus } = busLike('redis-streams');
    await expect(bus.subscribe(Placed, { group: 'b', ordering: 'key' }, () => {})).rejects.toMatchObject({ capability: 'orderedByKey' });
    const extended = deferred<string>();
    await bus.subscribe(Placed, { group: 'g' }, async (_d, ctx) => {
      await ctx.extendLease(1000);
      extended.resolve('extended');
    });
    await bus.publish(Placed, { n: 1 });
    expect(await extended.promise).toBe('extended');
  });

  it("like 'rabbitmq' holds a retry for the delay tier it rounds up to", async () => {
    const clock = new ManualClock();
    const { bus, transport, spy } = busLike('rabbitmq', { clock });
    const attempts: number[] = [];
    await bus.subscribe(Placed, { group: 'g' }, (_d, ctx) => {
      attempts.push(ctx.attempt);
      if (ctx.attempt === 1) throw new Error('once');
    });
    const { id } = await bus.publish(Placed, { n: 1 });
    await spy.waitFor(id, { status: 'retried' });
    expect(spy.of(id).find((r) => r.outcome.status === 'retried')?.outcome).toMatchObject({ delayMs: 30 });
    clock.advance(30); // the 30 ms delay is held by the 50 ms tier
    await transport.idle();
    expect(attempts).toEqual([1]);
    clock.advance(20);
    await spy.waitFor(id, { status: 'acked' });
    expect(attempts).toEqual([1, 2]);
  });

  it('hold a retry longer than one timer can (Redis: up to a year) instead of firing it at once', async () => {
    const clock = new ManualClock();
    const { bus, transport, spy } = busLike('redis-streams', { clock });
    const attempts: number[] = [];
    const longMs = 40 * 24 * 3_600_000; // beyond setTimeout's 2^31 - 1 ms
    await bus.subscribe(Placed, { group: 'g' }, (_d, ctx) => {
      attempts.push(ctx.attempt);
      if (ctx.attempt === 1) ctx.retry({ delayMs: longMs });
    });
    const { id } = await bus.publish(Placed, { n: 1 });
    await spy.waitFor(id, { status: 'retried' });
    clock.advance(2 ** 31 - 1);
    await transport.idle();
    expect(attempts).toEqual([1]);
    clock.advance(longMs - (2 ** 31 - 1));
    await spy.waitFor(id, { status: 'acked' });
    expect(attempts).toEqual([1, 2]);
  });

  it("like 'kafka' refuses a message over message.max.bytes that core's limit lets through", async () => {
    const Padded = defineEvent({ type: 'padded', schema: z.object({ pad: z.string() }) });
    const { bus } = busLike('kafka', { maxPayloadBytes: 2 * 1024 * 1024 });
    await bus.subscribe(Padded, { group: 'g' }, () => {});
    const big = bus.publish(Padded, { pad: 'x'.repeat(1_048_576) });
    await expect(big).rejects.toBeInstanceOf(PublishRejectedError);
    await expect(big).rejects.toThrow(/exceeds Kafka message\.max\.bytes \(1048588 bytes\)/);
    await expect(bus.publish(Padded, { pad: 'x' })).resolves.toBeDefined();
    const { bus: memory } = busLike('memory', { maxPayloadBytes: 2 * 1024 * 1024 });
    await memory.subscribe(Padded, { group: 'g' }, () => {});
    await expect(memory.publish(Padded, { pad: 'x'.repeat(1_048_576) })).resolves.toBeDefined();
  });

  it('check the broker object names the transport derives for a group', async () => {
    // A namespace, type and group each valid for core, whose derived names are too long for some brokers.
    const namespace = 'n'.repeat(64);
    const Long = defineEvent({ type: 'l'.repeat(60), schema: z.object({ n: z.number() }) });
    const group = 'g'.repeat(128);
    const { bus: kafka } = busLike('kafka', { namespace });
    await expect(kafka.subscribe(Long, { group }, () => {})).rejects.toThrow(/Kafka retry topic .* 249/);
    const { bus: rabbit } = busLike('rabbitmq', { namespace });
    await expect(rabbit.subscribe(Long, { group }, () => {})).rejects.toThrow(/RabbitMQ dead-letter queue name .* 255/);
    const { bus: memory } = busLike('memory', { namespace });
    await expect(memory.subscribe(Long, { group }, () => {})).resolves.toBeDefined();
  });

  it('refuses an unknown profile and tiers outside the RabbitMQ profile', () => {
    expect(() => new MemoryTransport({ like: 'nats' as MemoryProfileName })).toThrow(ConfigError);
    expect(() => new MemoryTransport({ like: 'toString' as MemoryProfileName })).toThrow(ConfigError);
    expect(() => new MemoryTransport({ like: 'kafka', delayTiersMs: [10] })).toThrow(ConfigError);
    expect(new MemoryTransport({ like: 'rabbitmq', delayTiersMs: [10, 100] }).capabilities.maxRetryDelayMs).toBe(100);
  });
});
