/**
 * The local API: HTTP over a unix socket (mode 0600, root only), one handler table. Every
 * response is built fresh from copies by the provider, never from live objects.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { isCladnetError } from '../errors';
import { METRICS_CONTENT_TYPE, renderMetrics } from './metrics';
import type { StatusDocument } from './types';

export type StatusProvider = () => StatusDocument;
/** A route's handler: the query string in, a JSON-able answer (or its promise) out. */
export type RouteHandler = (query: URLSearchParams) => unknown;

/** A handler's answer that is not JSON: sent as it is, with its own content type. */
export class TextBody {
  constructor(
    readonly contentType: string,
    readonly text: string,
  ) {}
}

export class StatusServer {
  private server?: http.Server;

  constructor(
    private readonly socketPath: string,
    private readonly provider: StatusProvider,
    /** More routes ("METHOD /path"), e.g. the diagnostics (src/agent/diagnostics.ts). */
    private readonly extra: Record<string, RouteHandler> = {},
  ) {}

  async start(): Promise<void> {
    fs.mkdirSync(path.dirname(this.socketPath), { recursive: true, mode: 0o755 });
    try {
      fs.unlinkSync(this.socketPath); // a stale socket from a crashed run
    } catch {
      /* none */
    }
    const routes: Record<string, RouteHandler> = {
      'GET /v1/status': () => this.provider(),
      'GET /v1/metrics': () => new TextBody(METRICS_CONTENT_TYPE, renderMetrics(this.provider())),
      ...this.extra,
    };
    this.server = http.createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://local');
      const handler = routes[`${req.method} ${url.pathname}`];
      if (!handler) {
        res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'not found' }));
        return;
      }
      // A handler's error with a code is the caller's (404 for an unknown peer, 503 while starting, 400 else); others are ours.
      Promise.resolve()
        .then(() => handler(url.searchParams))
        .then(
          (body) => {
            if (body instanceof TextBody) res.writeHead(200, { 'content-type': body.contentType }).end(body.text);
            else res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
          },
          (e: Error) => {
            const status = isCladnetError(e) ? (e.code === 'ENOPEER' ? 404 : e.transient ? 503 : 400) : 500;
            res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ error: e.message, code: isCladnetError(e) ? e.code : undefined }));
          },
        );
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.socketPath, () => resolve());
    });
    fs.chmodSync(this.socketPath, 0o600);
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    // (a request still in flight, a ping or netcheck waiting for answers, must not hold the stop up)
    const closed = new Promise<void>((r) => s.close(() => r()));
    s.closeAllConnections?.();
    await closed;
    try {
      fs.unlinkSync(this.socketPath);
    } catch {
      /* gone */
    }
  }
}
