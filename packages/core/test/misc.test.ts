import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  ConfigError,
  defineEvent,
  EventBus,
  LeaseLostError,
  MemoryIdempotencyStore,
  readBusbarEnv,
  redact,
  redactingLogger,
  topicName,
  ValidationError,
  validateGroup,
  validateNamespace,
} from '../src/index.js';
import { checkBrokerName } from '../src/transport/index.js';
import { connectedTransport as memoryLike } from './fixtures.js';

describe('ValidationError', () => {
  it('names the first issue path and message in its message', () => {
    const e = new ValidationError('payload for "ping" does not match its schema', [
      { path: ['user', 'emails', 0], message: 'Invalid email' },
      { path: ['n'], message: 'Required' },
      { path: [], message: 'x' },
    ]);
    expect(e.message).toBe('payload for "ping" does not match its schema: user.emails[0]: Invalid email (and 2 more issues)');
    expect(e.issues).toHaveLength(3);
    expect(new ValidationError('bad', [{ path: [], message: 'Expected object' }]).message).toBe('bad: (root): Expected object');
    expect(new ValidationError('bad').message).toBe('bad');
  });

  it('is what publish rejects with for a payload off its schema, naming the field', async () => {
    const Order = defineEvent({ type: 'order', schema: z.object({ id: z.string(), qty: z.number() }) });
    const bus = new EventBus({ transport: memoryLike() });
    const error = await bus.publish(Order, { id: 'a', qty: 'two' } as never).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ValidationError);
    expect((error as Error).message).toMatch(/^payload for "order" does not match its schema: qty: .*number/i);
    await bus.close();
  });
});

describe('redaction', () => {
  it('removes URL passwords and secret query parameters', () => {
    expect(redact('amqps://user:p%40ss@mq.example.com:5671/vhost')).toBe('amqps://user:***@mq.example.com:5671/vhost');
    expect(redact('redis://:hunter2@redis.cache.svc.cluster.local:6379')).toBe('redis://:***@redis.cache.svc.cluster.local:6379');
    expect(redact('http://h/x?password=abc&user=u')).toBe('http://h/x?password=***&user=u');
  });

  it('removes a password holding an unencoded @, and a user holding one', () => {
    expect(redact('amqp://user:p@ss@host:5672/vhost')).toBe('amqp://user:***@host:5672/vhost');
    expect(redact('connect to amqp://user:p@ss@host failed')).toBe('connect to amqp://user:***@host failed');
    expect(redact('amqp://me@example.com:pw@host')).toBe('amqp://me@example.com:***@host');
    expect(redact('amqp://u:p@h1 and redis://u2:p@2@h2/0')).toBe('amqp://u:***@h1 and redis://u2:***@h2/0');
    // No credentials: nothing changes.
    for (const plain of [
      'amqp://host:5672/vhost',
      'amqp://user@host:5672',
      'redis://127.0.0.1:6999',
      'kafka 127.0.0.1:9092,127.0.0.1:9093',
    ]) {
      expect(redact(plain)).toBe(plain);
    }
  });

  it('removes password=… outside a URL: key=value, key: value and JSON forms', () => {
    expect(redact('login failed: password=secret user=u')).toBe('login failed: password=*** user=u');
    expect(redact('{"user":"u","password":"x"}')).toBe('{"user":"u","password":"***"}');
    expect(redact("{ password: 'hunter2' }")).toBe("{ password: '***' }");
    expect(redact('PASSWORD=abc; sasl.password=zz, token: t0k')).toBe('PASSWORD=***; sasl.password=***, token: ***');
    expect(redact('password must be a string')).toBe('password must be a string');
    expect(redact(redact('password=secret'))).toBe('password=***');
  });

  it('redacting logger cleans messages, nested strings, errors and secret-named fields', () => {
    const lines: unknown[] = [];
    const sink = { debug: () => {}, info: (o: object, m?: string) => lines.push([o, m]), warn: () => {}, error: () => {} };
    redactingLogger(sink).info({ url: 'amqp://a:b@h', nested: { err: new Error('redis://:pw@h') }, password: 'x' }, 'to amqp://a:b@h');
    const text = JSON.stringify(lines);
    expect(text).not.toMatch(/:b@|:pw@|"x"/);
    expect(text).toContain('amqp://a:***@h');
  });
});

describe('environment config', () => {
  it('defaults to memory and localhost DNS names, never IPs', () => {
    const env = readBusbarEnv({});
    expect(env.transport).toBe('memory');
    expect(env.rabbitmqUrl).toBe('amqp://localhost:5672');
    expect(env.kafkaBrokers).toEqual(['localhost:9092']);
    expect(env.redisUrl).toBe('redis://localhost:6379');
  });

  it('reads Kubernetes service names and rejects unknown transports', () => {
    const env = readBusbarEnv({
      BUSBAR_TRANSPORT: 'kafka',
      BUSBAR_KAFKA_BROKERS: 'kafka-0.kafka.data.svc.cluster.local:9092, kafka-1.kafka.data.svc.cluster.local:9092',
    });
    expect(env.kafkaBrokers).toHaveLength(2);
    expect(() => readBusbarEnv({ BUSBAR_TRANSPORT: 'nats' })).toThrow(ConfigError);
  });
});

describe('names', () => {
  it('prefixes topics with the namespace and validates names', () => {
    expect(topicName('tenant-a', 'user.created')).toBe('tenant-a.user.created');
    expect(topicName(undefined, 'user.created')).toBe('user.created');
    expect(() => validateNamespace('Bad NS')).toThrow(ConfigError);
    expect(() => validateGroup('')).toThrow(ConfigError);
    expect(() => checkBrokerName('x'.repeat(300), { maxNameLength: 255, namePattern: /^[\w.]+$/ })).toThrow(/300 bytes/);
    expect(() => checkBrokerName('a b', { maxNameLength: 255, namePattern: /^[\w.]+$/ })).toThrow(ConfigError);
  });
});

describe('MemoryIdempotencyStore', () => {
  it('claims, completes once with atomic effects, and reports duplicates', async () => {
    const s = new MemoryIdempotencyStore();
    const a = await s.claim('g', 'k', 1000);
    expect(a.status).toBe('acquired');
    expect((await s.claim('g', 'k', 1000)).status).toBe('in-progress');
    let effects = 0;
    if (a.status === 'acquired') await s.complete('g', 'k', a.token, 60_000, [() => effects++]);
    expect(effects).toBe(1);
    expect((await s.claim('g', 'k', 1000)).status).toBe('completed');
    expect((await s.claim('other-group', 'k', 1000)).status).toBe('acquired');
  });

  it('release lets a retry claim again; a lost lease refuses completion and applies nothing', async () => {
    let now = 0;
    const s = new MemoryIdempotencyStore({ clock: { now: () => now, setTimer: () => () => {} } });
    const a = await s.claim('g', 'k', 100);
    if (a.status !== 'acquired') throw new Error('expected acquired');
    await s.release('g', 'k', a.token);
    const b = await s.claim('g', 'k', 100);
    if (b.status !== 'acquired') throw new Error('expected acquired');
    now += 200; // lease expired
    const c = await s.claim('g', 'k', 100);
    expect(c.status).toBe('acquired');
    let applied = false;
    await expect(s.complete('g', 'k', b.token, 1000, [() => (applied = true)])).rejects.toBeInstanceOf(LeaseLostError);
    expect(applied).toBe(false);
  });

  it('forgets completed keys after their TTL and bounds its size', async () => {
    let now = 0;
    const s = new MemoryIdempotencyStore({ clock: { now: () => now, setTimer: () => () => {} }, maxEntries: 10 });
    const a = await s.claim('g', 'k', 100);
    if (a.status === 'acquired') await s.complete('g', 'k', a.token, 1000, []);
    now += 1001;
    expect((await s.claim('g', 'k', 100)).status).toBe('acquired');
    for (let i = 0; i < 50; i++) await s.claim('g', `k${i}`, 100);
    expect(s.size).toBeLessThanOrEqual(10);
  });
});
