import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ConfigError, defineEvent, EventBus, namespaceFromEnv, OutcomeSpy, TRANSPORT_PACKAGES, transportFromEnv } from '../src/index.js';

const Ping = defineEvent({ type: 'from-env.ping', version: 1, schema: z.object({ n: z.number() }) });

// A folder outside the workspace with one module that imports by name: no package is installed
// there, so Node reports the named package missing exactly as in an app that lacks it.
const nowhere = mkdtempSync(join(tmpdir(), 'busbar-from-env-'));
writeFileSync(join(nowhere, 'load.mjs'), 'export default (name) => import(name);\n');
afterAll(() => rmSync(nowhere, { recursive: true, force: true }));
const loadFromNowhere = async (name: string): Promise<unknown> => {
  const { default: load } = (await import(pathToFileURL(join(nowhere, 'load.mjs')).href)) as { default: (n: string) => Promise<unknown> };
  return load(name);
};

describe('transportFromEnv', () => {
  it('builds the memory transport by default, from its package imported on demand, and a bus runs on it', async () => {
    const transport = await transportFromEnv({ env: {} });
    expect(transport.name).toBe('memory');
    const bus = new EventBus({ transport, namespace: namespaceFromEnv({ BUSBAR_NAMESPACE: ' t1 ' }) });
    const spy = new OutcomeSpy(bus);
    try {
      const handled: number[] = [];
      await bus.subscribe(Ping, { group: 'g' }, async (p) => void handled.push(p.n));
      const { id } = await bus.publish(Ping, { n: 7 });
      await spy.waitFor(id, { group: 'g', status: 'acked' });
      expect(handled).toEqual([7]);
      expect(bus.topicOf(Ping)).toBe('t1.from-env.ping');
    } finally {
      spy.dispose();
      await bus.close();
    }
  });

  it('selects the transport named by BUSBAR_TRANSPORT and passes it the URL variables', async () => {
    const seen: unknown[] = [];
    const load = async (name: string) => {
      expect(name).toBe(TRANSPORT_PACKAGES.kafka);
      // the real package, so the options reach its real constructor
      const mod = (await import(name)) as { KafkaTransport: new (o: unknown) => object };
      return {
        KafkaTransport: class extends mod.KafkaTransport {
          constructor(o: unknown) {
            seen.push(o);
            super(o);
          }
        },
      };
    };
    const transport = await transportFromEnv({
      env: { BUSBAR_TRANSPORT: 'kafka', BUSBAR_KAFKA_BROKERS: 'k1:9092, k2:9092' },
      options: { kafka: { clientId: 'from-env-test' } },
      load,
    });
    expect(transport.name).toBe('kafka');
    expect(seen).toEqual([{ brokers: ['k1:9092', 'k2:9092'], clientId: 'from-env-test' }]);
  });

  it('names the package to install when the selected transport is missing', async () => {
    const error = await transportFromEnv({ env: { BUSBAR_TRANSPORT: 'rabbitmq' }, load: loadFromNowhere }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain('npm install @busbar/rabbitmq');
    expect((error as Error).message).not.toContain(nowhere);
  });

  it('rejects an unknown BUSBAR_TRANSPORT and an invalid BUSBAR_NAMESPACE with a ConfigError', async () => {
    await expect(transportFromEnv({ env: { BUSBAR_TRANSPORT: 'nats' } })).rejects.toThrow(ConfigError);
    expect(() => namespaceFromEnv({ BUSBAR_NAMESPACE: 'has space' })).toThrow(ConfigError);
    expect(namespaceFromEnv({ BUSBAR_NAMESPACE: '  ' })).toBeUndefined();
    expect(namespaceFromEnv({})).toBeUndefined();
  });

  it('EventBus takes its namespace from BUSBAR_NAMESPACE unless the options give one', async () => {
    const saved = process.env.BUSBAR_NAMESPACE;
    process.env.BUSBAR_NAMESPACE = 'envns';
    const fromEnv = new EventBus({ transport: await transportFromEnv({ env: {} }) });
    const explicit = new EventBus({ transport: await transportFromEnv({ env: {} }), namespace: 'given' });
    try {
      expect(fromEnv.topicOf(Ping)).toBe('envns.from-env.ping');
      expect(explicit.topicOf(Ping)).toBe('given.from-env.ping');
      process.env.BUSBAR_NAMESPACE = 'bad space';
      expect(() => new EventBus({ transport: explicit.transport })).toThrow(ConfigError);
    } finally {
      if (saved === undefined) delete process.env.BUSBAR_NAMESPACE;
      else process.env.BUSBAR_NAMESPACE = saved;
      await Promise.all([fromEnv.close(), explicit.close()]);
    }
  });

  it('rethrows a load failure that is not the package itself missing', async () => {
    const broken = new Error("Cannot find package 'amqplib' imported from /x/node_modules/@busbar/rabbitmq/dist/index.js");
    Object.assign(broken, { code: 'ERR_MODULE_NOT_FOUND' });
    const error = await transportFromEnv({ env: { BUSBAR_TRANSPORT: 'rabbitmq' }, load: () => Promise.reject(broken) }).catch(
      (e: unknown) => e,
    );
    expect(error).toBe(broken);
  });
});
