/**
 * The local API: HTTP over a unix socket (mode 0600, root only), one handler table. Every
 * response is built fresh from copies by the provider, never from live objects.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { METRICS_CONTENT_TYPE, renderMetrics } from './metrics';
import type { StatusDocument } from './types';

export type StatusProvider = () => StatusDocument;

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
  ) {}

  async start(): Promise<void> {
    fs.mkdirSync(path.dirname(this.socketPath), { recursive: true, mode: 0o755 });
    try {
      fs.unlinkSync(this.socketPath); // a stale socket from a crashed run
    } catch {
      /* none */
    }
    const routes: Record<string, () => unknown> = {
      'GET /v1/status': () => this.provider(),
      'GET /v1/metrics': () => new TextBody(METRICS_CONTENT_TYPE, renderMetrics(this.provider())),
    };
    this.server = http.createServer((req, res) => {
      const handler = routes[`${req.method} ${(req.url ?? '').split('?')[0]}`];
      if (!handler) {
        res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'not found' }));
        return;
      }
      try {
        const body = handler();
        if (body instanceof TextBody) res.writeHead(200, { 'content-type': body.contentType }).end(body.text);
        else res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
      } catch (e) {
        res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: (e as Error).message }));
      }
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
    await new Promise<void>((r) => s.close(() => r()));
    s.closeAllConnections?.();
    try {
      fs.unlinkSync(this.socketPath);
    } catch {
      /* gone */
    }
  }
}
