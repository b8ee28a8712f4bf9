/**
 * `cladnet stun-server`: a tiny RFC 5389 binding responder. Agents behind NAT send it binding
 * requests from their data-plane socket and learn the address and port the NAT gave them. Run it
 * on any host with a public address (or in the router namespace of the end-to-end tests).
 *
 * It answers a binding request with a binding success carrying XOR-MAPPED-ADDRESS (the request's
 * source) and a FINGERPRINT, and drops everything else: other methods and classes, malformed
 * messages, IPv6 sources. It keeps no state per client. An answer is 40 bytes, at most twice the
 * smallest request, so it is a poor amplifier.
 */
import * as dgram from 'node:dgram';
import { CladnetError } from '../errors';
import { createRootLogger, type Logger } from '../log';
import { encodeBindingSuccess, isStunPacket, parseStun, STUN_METHOD_BINDING } from '../control/stun';
import { formatEndpoint, parseIpv4 } from '../util/ipv4';

export interface StunServerStats {
  answered: number;
  ignored: number;
}

export interface StunServer {
  /** The bound address, e.g. "127.0.0.1:3478" (the real port when asked for port 0). */
  readonly address: string;
  readonly port: number;
  /** A copy of the counters. */
  stats(): StunServerStats;
  close(): Promise<void>;
}

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** "ip:port" with an IPv4 address and a port 0..65535 (0: any free port). */
export function parseListen(s: string): { ip: string; port: number } {
  const colon = s.lastIndexOf(':');
  const ip = colon < 0 ? '' : s.slice(0, colon);
  const portStr = colon < 0 ? '' : s.slice(colon + 1);
  if (parseIpv4(ip) === null || !/^\d{1,5}$/.test(portStr) || Number(portStr) > 65535) {
    throw new CladnetError('ECONFIG', `listen: "${s}" is not an IPv4 address and port (e.g. 0.0.0.0:3478)`, { field: 'listen' });
  }
  return { ip, port: Number(portStr) };
}

/** Binds the socket and starts answering; resolves once bound. */
export function startStunServer(opts: { listen: string; log: Logger }): Promise<StunServer> {
  const { ip, port } = parseListen(opts.listen);
  const log = opts.log.child({ component: 'stun-server' });
  const counts: StunServerStats = { answered: 0, ignored: 0 };
  const sock = dgram.createSocket({ type: 'udp4' });

  const onMessage = (msg: Buffer, rinfo: dgram.RemoteInfo): void => {
    const from = rinfo.family === 'IPv4' ? parseIpv4(rinfo.address) : null;
    if (from === null || !isStunPacket(msg, 0, msg.length)) {
      counts.ignored++;
      return;
    }
    const r = parseStun(msg);
    if (!r.ok || r.msg.method !== STUN_METHOD_BINDING || r.msg.cls !== 'request') {
      counts.ignored++;
      if (log.isLevelEnabled('debug')) log.debug({ from: `${rinfo.address}:${rinfo.port}`, why: r.ok ? r.msg.cls : r.error }, 'ignored');
      return;
    }
    sock.send(encodeBindingSuccess(r.msg.txId, from, rinfo.port), rinfo.port, rinfo.address, (err) => {
      if (err && log.isLevelEnabled('debug')) log.debug({ to: `${rinfo.address}:${rinfo.port}`, err: err.message }, 'send failed');
    });
    counts.answered++;
  };

  return new Promise<StunServer>((resolve, reject) => {
    const onBindError = (err: Error): void => {
      sock.close();
      reject(new CladnetError('EOS', `stun-server: cannot listen on ${opts.listen}: ${err.message}`, { cause: err }));
    };
    sock.once('error', onBindError);
    sock.bind(port, ip, () => {
      sock.off('error', onBindError);
      sock.on('error', (err) => log.warn({ err: err.message }, 'socket error'));
      sock.on('message', onMessage);
      const bound = sock.address();
      const address = formatEndpoint(parseIpv4(bound.address)!, bound.port);
      log.info({ listen: address }, 'stun-server listening');
      let closed: Promise<void> | null = null;
      resolve({
        address,
        port: bound.port,
        stats: () => ({ ...counts }),
        close: () =>
          (closed ??= new Promise<void>((done) => {
            sock.close(() => {
              log.info({ ...counts }, 'stun-server stopped');
              done();
            });
          })),
      });
    });
  });
}

/** Runs until SIGTERM or SIGINT, then closes the socket and resolves. */
export async function runStunServer(opts: { listen: string; log: Logger }): Promise<StunServerStats> {
  const server = await startStunServer(opts);
  await new Promise<void>((resolve) => {
    const onSignal = (sig: NodeJS.Signals): void => {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      opts.log.info({ signal: sig }, 'signal received');
      resolve();
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
  await server.close();
  return server.stats();
}

/** The command's action: checks the flags, makes the logger, runs. */
export async function stunServerCommand(o: { listen: string; logLevel?: string }): Promise<void> {
  const level = o.logLevel ?? 'info';
  if (!LEVELS.includes(level)) {
    throw new CladnetError('ECONFIG', `logLevel: "${level}" is not one of ${LEVELS.join(', ')}`, { field: 'logLevel' });
  }
  parseListen(o.listen); // a bad address is an error before the logger exists
  await runStunServer({ listen: o.listen, log: createRootLogger(level) });
}
