import pino from 'pino';

/**
 * One pino root per process; components take a child with a fixed `component` field.
 * Key material never reaches a log line: the redact list below is the last line of defence,
 * the first is that nobody passes keys to the logger.
 */
export type Logger = pino.Logger;

const REDACT = [
  ...['privateKey', 'secretKey', '*.privateKey', '*.secretKey', 'key', '*.key', 'sendKey', 'recvKey', '*.sendKey', '*.recvKey'],
  // etcd credentials: an options object ({auth: {password}}) or the agent config ({etcdPassword}).
  ...['password', '*.password', '*.*.password', 'etcdPassword', '*.etcdPassword'],
  // join tokens (a token id is logged as `tokenId`) and their delegate secret.
  ...['token', '*.token', 'secret', '*.secret'],
];

export function createRootLogger(level: string = 'info', destination?: pino.DestinationStream): Logger {
  return pino(
    { level, base: { pid: process.pid }, redact: { paths: REDACT, censor: '[redacted]' } },
    destination ?? pino.destination({ dest: 2, sync: true }),
  );
}

/** A logger that drops everything: for tests and library callers that pass none. */
export const silentLogger: Logger = pino({ level: 'silent' });
