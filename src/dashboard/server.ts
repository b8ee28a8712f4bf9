import * as http from 'node:http';
import * as net from 'node:net';
import type { Etcd3 } from 'etcd3';
import { CladnetError } from '../errors';
import type { Logger } from '../log';
import { EtcdLink } from '../control/etcd-link';
import type { NetworkSpec } from '../control/records';
import { Registry } from '../control/registry';
import { DASHBOARD_HTML } from './page';
import { buildSnapshot, ViewReader, type Snapshot } from './snapshot';
import { SseHub } from './sse';

/**
 * `cladnet dashboard`: watches one network in etcd as an observer (registry.ts: the same
 * certificate checks and revocations as an agent, no host of its own) and serves
 *
 *   GET /              the page (page.ts)
 *   GET /api/snapshot  the current Snapshot (snapshot.ts) as JSON
 *   GET /api/events    server-sent events (sse.ts): event "snapshot" with the whole snapshot,
 *                      at once and after every change
 *
 * Changes from etcd are coalesced (REBUILD_DELAY_MS) into one rebuild, and it looks again every
 * RECHECK_EVERY_MS (etcd's reachability); a snapshot equal to the last one (but for its time) is
 * not sent again.
 */
export const REBUILD_DELAY_MS = 100;
export const RECHECK_EVERY_MS = 5_000;

export interface DashboardOptions {
  client: Etcd3;
  network: NetworkSpec;
  /** "ip:port" (port 0: any free one). */
  listen: string;
  log: Logger;
  /** The etcd link the client reports to (give the same one to createEtcd); default a private one. */
  link?: EtcdLink;
  now?: () => number;
}

export interface Dashboard {
  /** The bound "ip:port". */
  readonly address: string;
  snapshot(): Snapshot;
  close(): Promise<void>;
}

/** "ip:port" for the web server: IPv4 or [IPv6], port 0..65535. */
export function parseHttpListen(s: string): { host: string; port: number } {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]|localhost):(\d{1,5})$/.exec(s);
  if (!m || Number(m[2]) > 65535) {
    throw new CladnetError('ECONFIG', `listen: "${s}" is not an address and port (e.g. 127.0.0.1:8080)`, { field: 'listen' });
  }
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

/**
 * Whether a request's Host header names this server by address: an IP literal or localhost, with
 * or without a port. A web page on another site that points its own DNS name at our address (DNS
 * rebinding) sends that name as Host and is refused, so pages the operator's browser opens cannot
 * read the topology. A request without Host (HTTP/1.0, never a browser's) passes.
 */
export function hostAllowed(host: string | undefined): boolean {
  if (host === undefined) return true;
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]+))(?::\d{1,5})?$/.exec(host);
  if (!m) return false;
  const name = m[1] ?? m[2]!;
  return m[1] !== undefined ? net.isIPv6(name) : name.toLowerCase() === 'localhost' || net.isIPv4(name);
}

export async function startDashboard(opts: DashboardOptions): Promise<Dashboard> {
  const { host, port } = parseHttpListen(opts.listen);
  const log = opts.log.child({ component: 'dashboard' });
  const now = opts.now ?? Date.now;
  const spec = opts.network;
  const reader = new ViewReader(spec.name, log);
  const hub = new SseHub();
  const link = opts.link ?? new EtcdLink({ log: opts.log });
  let timer: NodeJS.Timeout | null = null;
  let current: Snapshot;
  let lastBody = '';

  const registry = new Registry({
    client: opts.client,
    network: spec,
    observer: true,
    log: opts.log,
    link,
    onMirrorChange: () => schedule(),
  });

  const build = (): Snapshot =>
    buildSnapshot(
      {
        network: spec.name,
        now: now(),
        connected: registry.connected(),
        members: registry.peers(),
        alive: registry.aliveHosts(),
        revoked: registry.revokedHosts(),
        views: registry.views(),
      },
      reader,
    );

  const rebuild = (): void => {
    timer = null;
    current = build();
    const body = JSON.stringify({ ...current, at: '' });
    if (body === lastBody) return;
    lastBody = body;
    hub.publish('snapshot', JSON.stringify(current));
  };
  function schedule(): void {
    if (timer) return;
    timer = setTimeout(rebuild, REBUILD_DELAY_MS);
  }
  current = build();
  // etcd's reachability changes without a change of data: look again now and then (an equal
  // snapshot is not sent).
  const tick = setInterval(schedule, RECHECK_EVERY_MS);
  tick.unref();

  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (!hostAllowed(req.headers.host)) {
      res.writeHead(421, { 'content-type': 'text/plain' }).end('this dashboard answers only to its IP address or localhost\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    if (url === '/') {
      res.writeHead(200, {
        'content-type': 'text/html; charset=utf-8',
        'cache-control': 'no-store',
        'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        'x-content-type-options': 'nosniff',
      });
      res.end(DASHBOARD_HTML);
    } else if (url === '/api/snapshot') {
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(JSON.stringify(current));
    } else if (url === '/api/events') {
      hub.add(res);
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new CladnetError('EOS', `dashboard: cannot listen on ${opts.listen}: ${e.message}`, { cause: e })));
    server.listen(port, host, () => resolve());
  });
  const bound = server.address() as net.AddressInfo;
  const address = bound.family === 'IPv6' ? `[${bound.address}]:${bound.port}` : `${bound.address}:${bound.port}`;
  // Not awaited: the page answers at once, and says "etcd unreachable" until the first load.
  void registry.watchChanges(() => schedule()).catch((e: Error) => log.error({ err: e.message }, 'watch failed'));
  log.info({ listen: address, network: spec.name }, 'dashboard up');

  return {
    address,
    snapshot: () => current,
    async close() {
      clearInterval(tick);
      if (timer) clearTimeout(timer);
      timer = null;
      hub.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await registry.close();
      if (!opts.link) link.close();
    },
  };
}
