import { type BusbarEnv, readBusbarEnv, type TransportName } from './env.js';
import { ConfigError } from './errors.js';
import { validateNamespace } from './naming.js';
import type { Transport } from './spi.js';

/** The package that implements each transport: an optional peer dependency of `@busbar/core`. */
export const TRANSPORT_PACKAGES: Readonly<Record<TransportName, string>> = {
  memory: '@busbar/memory',
  rabbitmq: '@busbar/rabbitmq',
  kafka: '@busbar/kafka',
  'redis-streams': '@busbar/redis-streams',
};

/** Options of {@link transportFromEnv}. */
export interface TransportFromEnvOptions {
  /** Where the variables come from. @defaultValue process.env */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /**
   * Further constructor options per transport, e.g. `{ kafka: { client: 'platformatic' } }`; an
   * option given here wins over the environment's (`url`, `brokers`). They are passed through as
   * given: core does not know the transports' option types.
   * @defaultValue {}
   */
  readonly options?: { readonly [K in TransportName]?: Readonly<Record<string, unknown>> };
  /**
   * Loads a transport package by name. The default, a dynamic `import()` in `@busbar/core`, resolves
   * the package from where `@busbar/core` is installed, which finds it when it is installed beside
   * core (npm, or pnpm, which links an installed optional peer). Pass `(name) => import(name)`
   * written in your own module to resolve from there instead (a bundler then sees the import).
   * @defaultValue `(name) => import(name)` from `@busbar/core`
   */
  readonly load?: (name: string) => Promise<unknown>;
}

/** The constructor each transport package exports, by transport. */
const CONSTRUCTORS: Readonly<Record<TransportName, string>> = {
  memory: 'MemoryTransport',
  rabbitmq: 'RabbitMqTransport',
  kafka: 'KafkaTransport',
  'redis-streams': 'RedisStreamsTransport',
};

/** What the environment says about each transport's constructor options. */
function envOptions(env: BusbarEnv): Record<string, unknown> {
  switch (env.transport) {
    case 'memory':
      return {};
    case 'rabbitmq':
      return { url: env.rabbitmqUrl };
    case 'kafka':
      return { brokers: [...env.kafkaBrokers] };
    case 'redis-streams':
      return { url: env.redisUrl };
  }
}

// A specifier in a variable: TypeScript does not resolve it (core cannot depend on its transports,
// which depend on core) and a bundler leaves it to run time.
const importPackage = (specifier: string): Promise<Record<string, unknown>> => import(specifier);

/** Whether `error` says that `specifier` itself (not one of its own dependencies) is not installed. */
function isMissing(error: unknown, specifier: string): boolean {
  const e = error as { code?: unknown; message?: unknown } | null;
  return (
    typeof e?.code === 'string' &&
    (e.code === 'ERR_MODULE_NOT_FOUND' || e.code === 'MODULE_NOT_FOUND') &&
    typeof e.message === 'string' &&
    e.message.includes(`'${specifier}'`)
  );
}

/**
 * Builds the transport the environment selects (see {@link readBusbarEnv}): `BUSBAR_TRANSPORT`
 * (`memory` by default, `rabbitmq`, `kafka` or `redis-streams`) with `BUSBAR_RABBITMQ_URL`,
 * `BUSBAR_KAFKA_BROKERS` or `BUSBAR_REDIS_URL`. The transport's package (see
 * {@link TRANSPORT_PACKAGES}) is imported only now, so only the selected one needs to be installed.
 *
 * The transport is constructed, not connected: `bus.ready()` (or the first publish or subscribe)
 * connects it. `EventBus` reads `BUSBAR_NAMESPACE` itself (see {@link namespaceFromEnv}).
 *
 * @example
 * const bus = new EventBus({ transport: await transportFromEnv() }); // honours BUSBAR_NAMESPACE too
 * @throws ConfigError when a variable is invalid, or when the selected transport's package is not
 *   installed (the message names the package to install).
 */
export async function transportFromEnv(options: TransportFromEnvOptions = {}): Promise<Transport> {
  const env = readBusbarEnv(options.env);
  const specifier = TRANSPORT_PACKAGES[env.transport];
  let mod: Record<string, unknown> | undefined;
  try {
    mod = (await (options.load ?? importPackage)(specifier)) as Record<string, unknown> | undefined;
  } catch (error) {
    if (!isMissing(error, specifier)) throw error;
    throw new ConfigError(
      `BUSBAR_TRANSPORT="${env.transport}" needs the package ${specifier}, which is not installed: npm install ${specifier}`,
      { cause: error },
    );
  }
  const Ctor = mod?.[CONSTRUCTORS[env.transport]];
  if (typeof Ctor !== 'function') {
    throw new ConfigError(`${specifier} does not export ${CONSTRUCTORS[env.transport]}; is it a Busbar transport package?`);
  }
  const ctorOptions = { ...envOptions(env), ...options.options?.[env.transport] };
  return new (Ctor as new (o: Record<string, unknown>) => Transport)(ctorOptions);
}

/**
 * `BUSBAR_NAMESPACE` from `env` (default `process.env`), validated, or `undefined` when it is unset
 * or blank. `EventBus` uses it when its `namespace` option is not given.
 * @throws ConfigError when the value is not a valid namespace.
 */
export function namespaceFromEnv(env: Readonly<Record<string, string | undefined>> = process.env): string | undefined {
  // Read here rather than through readBusbarEnv, which would also reject a bad BUSBAR_TRANSPORT.
  const namespace = env.BUSBAR_NAMESPACE?.trim() || undefined;
  return namespace === undefined ? undefined : validateNamespace(namespace);
}
