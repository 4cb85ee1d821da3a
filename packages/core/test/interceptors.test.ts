// Interceptors (BusOptions.interceptors): composition around publish and around the handler, the
// async context they propagate, and the settlement decided after the chain.
import { AsyncLocalStorage } from 'node:async_hooks';
import { describe, expect, it } from 'vitest';
import {
  CapabilityError,
  ConfigError,
  EventBus,
  type HandleCall,
  type HandleInterceptor,
  Headers,
  type PublishInterceptor,
} from '../src/index.js';
import { interceptHandler } from '../src/interceptors.js';
import { connectedTransport, HandTransport, Ping } from './fixtures.js';

/** Both delivery paths (see delivery.test.ts): a handler timeout far beyond the case selects the async one. */
const MODES = [
  { path: 'common', extra: {} },
  { path: 'async', extra: { handlerTimeoutMs: 60_000 } },
] as const;

describe('publish interceptors', () => {
  it('run outermost first before encoding, pass new options on, see the async context of the outer one and get the receipt', async () => {
    const t = new HandTransport();
    const als = new AsyncLocalStorage<string>();
    const seen: unknown[] = [];
    const outer: PublishInterceptor = (call, next) => {
      seen.push(['outer', call.event.type, call.topic, call.data, call.options.id]);
      return als.run('span-1', () =>
        next({ ...call, options: { ...call.options, traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' } }),
      );
    };
    const inner: PublishInterceptor = async (call, next) => {
      seen.push(['inner', als.getStore(), call.options.traceparent?.slice(0, 5)]);
      const receipt = await next();
      seen.push(['receipt', receipt]);
      return receipt;
    };
    const bus = new EventBus({ transport: t, namespace: 'ns', interceptors: { publish: [outer, inner] } });
    const receipt = await bus.publish(Ping, { n: 1 }, { id: 'p1' });
    expect(receipt).toEqual({ id: 'p1', idempotencyKey: 'p1', topic: 'ns.ping' });
    expect(seen).toEqual([
      ['outer', 'ping', 'ns.ping', { n: 1 }, 'p1'],
      ['inner', 'span-1', '00-0a'],
      ['receipt', receipt],
    ]);
    expect(t.published[0]?.headers[Headers.traceparent]).toBe('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
    await bus.close();
  });

  it('can refuse a publish (nothing sent), sees validation failures, and may call next only once', async () => {
    const t = new HandTransport();
    const errors: unknown[] = [];
    const bus = new EventBus({
      transport: t,
      interceptors: {
        publish: [
          async (call, next) => {
            if (call.options.key === 'refuse') throw new Error('refused by policy');
            try {
              return await next();
            } catch (error) {
              errors.push((error as Error).name);
              throw error;
            }
          },
          (call, next) => (call.options.key === 'twice' ? next().then(() => next()) : next()),
        ],
      },
    });
    await expect(bus.publish(Ping, { n: 1 }, { key: 'refuse' })).rejects.toThrow('refused by policy');
    await expect(bus.publish(Ping, { n: 'x' } as never)).rejects.toMatchObject({ name: 'ValidationError' });
    await expect(bus.publish(Ping, { n: 2 }, { key: 'twice' })).rejects.toThrow('next() twice');
    expect(errors).toEqual(['ValidationError', 'Error']);
    expect(t.published).toHaveLength(1); // only the first next() of 'twice' was sent
    await bus.close();
  });

  it('refuses interceptors that are not functions with a ConfigError naming them', () => {
    expect(() => new EventBus({ transport: connectedTransport(), interceptors: { handle: [42 as never] } })).toThrow(
      /interceptors\.handle\[0\] must be a function/,
    );
    expect(() => new EventBus({ transport: connectedTransport(), interceptors: { publish: 'x' as never } })).toThrow(ConfigError);
  });
});

describe('handle interceptors: without any, the handler runs as it is', () => {
  it('subscribes the handler itself (no wrapper on the delivery path)', () => {
    const handler = () => {};
    const site = { event: Ping, group: 'g', topic: 'ping', transport: 'hand' };
    expect(interceptHandler(undefined, handler, site)).toBe(handler);
    expect(interceptHandler([], handler, site)).toBe(handler);
  });
});

describe.each(MODES)('handle interceptors ($path path)', ({ extra }) => {
  it('wrap the handler outermost first, with the call, and propagate their async context into the handler', async () => {
    const t = new HandTransport();
    const als = new AsyncLocalStorage<string>();
    const order: unknown[] = [];
    const outer: HandleInterceptor = async (call: HandleCall, next) => {
      order.push(['outer', call.event.type, call.group, call.topic, call.transport, call.id, call.attempt, call.maxAttempts]);
      await als.run('process-span', next);
      order.push('outer done');
    };
    const inner: HandleInterceptor = (_call, next) => {
      order.push(['inner', als.getStore()]);
      return next();
    };
    const bus = new EventBus({ transport: t, interceptors: { handle: [outer, inner] } });
    await bus.subscribe(Ping, { ...extra, group: 'g', retry: { maxAttempts: 4 } }, async () => {
      order.push(['handler', als.getStore()]);
      await new Promise<void>((r) => setImmediate(r));
      order.push(['after await', als.getStore()]);
    });
    expect(await t.deliver(bus, { n: 1 })).toBe('ack');
    expect(order).toEqual([
      ['outer', 'ping', 'g', 'ping', 'hand', 'm1', 1, 4],
      ['inner', 'process-span'],
      ['handler', 'process-span'],
      ['after await', 'process-span'],
      'outer done',
    ]);
    expect(als.getStore()).toBeUndefined();
    await bus.close();
  });

  it("see the handler's throw and ctx.retry() / ctx.deadLetter(); core decides the settlement after the chain", async () => {
    const t = new HandTransport();
    const failures: unknown[] = [];
    const bus = new EventBus({
      transport: t,
      interceptors: {
        handle: [
          async (call, next) => {
            try {
              await next();
            } catch (error) {
              failures.push([call.id, (error as Error).name]);
              if (call.headers['x-swallow'] === undefined) throw error;
            }
          },
        ],
      },
    });
    await bus.subscribe(Ping, { ...extra, group: 'g' }, (d, ctx) => {
      if (d.n === 1) throw new Error('boom');
      if (d.n === 2) ctx.retry({ delayMs: 5 });
      if (d.n === 3) ctx.deadLetter('poison');
    });
    expect(await t.deliver(bus, { n: 1 }, 'm1')).toBe('retry');
    expect(await t.deliver(bus, { n: 2 }, 'm2')).toBe('retry');
    expect(await t.deliver(bus, { n: 3 }, 'm3')).toBe('dead-letter');
    expect(await t.deliver(bus, { n: 4 }, 'm4')).toBe('ack');
    expect(failures).toEqual([
      ['m1', 'Error'],
      ['m2', 'RetryLaterError'],
      ['m3', 'DeadLetterRequestedError'],
    ]);
    await bus.close();
  });

  it('may skip the handler (acked), and an interceptor failure is a handler failure', async () => {
    const t = new HandTransport();
    let handled = 0;
    const bus = new EventBus({
      transport: t,
      interceptors: {
        handle: [
          (call, next) => {
            if (call.id === 'skip') return Promise.resolve();
            if (call.id === 'sync-throw') throw new Error('interceptor bug');
            if (call.id === 'twice') return next().then(next);
            return next();
          },
        ],
      },
    });
    await bus.subscribe(Ping, { ...extra, group: 'g' }, () => {
      handled++;
    });
    expect(await t.deliver(bus, { n: 1 }, 'skip')).toBe('ack');
    expect(await t.deliver(bus, { n: 1 }, 'sync-throw')).toBe('retry');
    expect(handled).toBe(0);
    expect(await t.deliver(bus, { n: 1 }, 'twice')).toBe('retry');
    expect(handled).toBe(1);
    await bus.close();
  });
});

describe('bus.describeGroups', () => {
  it('rejects with CapabilityError when the transport cannot describe its groups', async () => {
    const bus = new EventBus({ transport: connectedTransport() });
    await expect(bus.describeGroups(Ping)).rejects.toBeInstanceOf(CapabilityError);
    await bus.close();
  });

  it("asks the transport about the event's topic (namespace applied)", async () => {
    const asked: string[] = [];
    const transport = {
      ...connectedTransport(),
      async describeGroups(topic: string) {
        asked.push(topic);
        return [{ group: 'g', backlog: 3 }];
      },
    };
    const bus = new EventBus({ transport, namespace: 'ns' });
    expect(await bus.describeGroups(Ping)).toEqual([{ group: 'g', backlog: 3 }]);
    expect(asked).toEqual(['ns.ping']);
    await bus.close();
  });
});
