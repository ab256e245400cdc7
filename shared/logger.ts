import { type DestinationStream, pino, type Logger } from 'pino';

export type { Logger };

/**
 * Structured logs with stable field names (agentId, clientId, streamId, reason).
 * Secrets are removed by configuration so no call site has to remember to.
 * Lines go to stdout unless a destination (a log file) is given.
 */
export function createLogger(name: string, level: string = process.env.EDGEMUX_LOG_LEVEL ?? 'info', destination?: DestinationStream): Logger {
  const options = {
    name,
    level,
    redact: {
      paths: ['password', '*.password', 'key', '*.key', 'token', '*.token', 'passphrase', '*.passphrase'],
      censor: '[redacted]',
    },
  };
  return destination === undefined ? pino(options) : pino(options, destination);
}

/** A logger for tests and embedded use that prints nothing unless EDGEMUX_LOG_LEVEL says so. */
export function quietLogger(name: string): Logger {
  return createLogger(name, process.env.EDGEMUX_LOG_LEVEL ?? 'silent');
}
