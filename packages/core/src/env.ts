import { ConfigError } from './errors.js';

/** Transports Busbar ships. */
export const TRANSPORT_NAMES = ['memory', 'rabbitmq', 'kafka', 'redis-streams'] as const;
/** One of {@link TRANSPORT_NAMES}. */
export type TransportName = (typeof TRANSPORT_NAMES)[number];

/**
 * Busbar's configuration from the environment. Brokers are found by DNS name or URL — in
 * Kubernetes, a service's name such as `amqp://rabbitmq.messaging.svc.cluster.local:5672` —
 * never by a hard-coded IP; the only default host is `localhost`.
 */
export interface BusbarEnv {
  /** `BUSBAR_TRANSPORT`. @defaultValue 'memory' */
  readonly transport: TransportName;
  /** `BUSBAR_NAMESPACE`: prefix of every broker object. @defaultValue undefined */
  readonly namespace: string | undefined;
  /** `BUSBAR_RABBITMQ_URL`. @defaultValue 'amqp://localhost:5672' */
  readonly rabbitmqUrl: string;
  /** `BUSBAR_KAFKA_BROKERS`, comma-separated `host:port`. @defaultValue ['localhost:9092'] */
  readonly kafkaBrokers: readonly string[];
  /** `BUSBAR_REDIS_URL`. @defaultValue 'redis://localhost:6379' */
  readonly redisUrl: string;
}

/** Reads {@link BusbarEnv} from `env` (default `process.env`). @throws ConfigError */
export function readBusbarEnv(env: Readonly<Record<string, string | undefined>> = process.env): BusbarEnv {
  const transport = (env.BUSBAR_TRANSPORT ?? 'memory').trim() || 'memory';
  if (!(TRANSPORT_NAMES as readonly string[]).includes(transport)) {
    throw new ConfigError(`BUSBAR_TRANSPORT="${transport}" is not one of ${TRANSPORT_NAMES.join(', ')}`);
  }
  return {
    transport: transport as TransportName,
    namespace: env.BUSBAR_NAMESPACE?.trim() || undefined,
    rabbitmqUrl: env.BUSBAR_RABBITMQ_URL?.trim() || 'amqp://localhost:5672',
    kafkaBrokers: (env.BUSBAR_KAFKA_BROKERS?.trim() || 'localhost:9092')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean),
    redisUrl: env.BUSBAR_REDIS_URL?.trim() || 'redis://localhost:6379',
  };
}
