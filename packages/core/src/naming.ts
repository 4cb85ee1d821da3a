import { ConfigError } from './errors.js';
import type { TransportCapabilities } from './spi.js';

const GROUP = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const NAMESPACE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** Validates a namespace prefix (`BusOptions.namespace`). @throws ConfigError */
export function validateNamespace(namespace: string): string {
  if (typeof namespace !== 'string' || !NAMESPACE.test(namespace)) {
    throw new ConfigError(`namespace "${namespace}" must match ${NAMESPACE.source}`);
  }
  return namespace;
}

/** Validates a consumer group name. @throws ConfigError */
export function validateGroup(group: string): string {
  if (typeof group !== 'string')
    throw new ConfigError(`group must be a string matching ${GROUP.source}, got ${group === null ? 'null' : typeof group}`);
  if (!GROUP.test(group)) throw new ConfigError(`group "${group}" must match ${GROUP.source}`);
  return group;
}

/** The broker-level destination of an event type: `<namespace>.<type>`, or `<type>` without one. */
export function topicName(namespace: string | undefined, type: string): string {
  return namespace ? `${namespace}.${type}` : type;
}

/**
 * Checks a broker object name against a transport's limits (length in UTF-8 bytes, allowed
 * characters). Transports call it for every name they derive. @throws ConfigError
 */
export function checkBrokerName(name: string, caps: Pick<TransportCapabilities, 'maxNameLength' | 'namePattern'>, what = 'name'): string {
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes > caps.maxNameLength) {
    throw new ConfigError(`${what} "${name.slice(0, 80)}…" is ${bytes} bytes; this broker allows ${caps.maxNameLength}`);
  }
  if (!caps.namePattern.test(name))
    throw new ConfigError(`${what} "${name}" has characters this broker does not allow (${caps.namePattern.source})`);
  return name;
}
