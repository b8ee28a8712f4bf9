import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAgentConfig, parseListenAddress } from '../../src/config/config';
import { isCladnetError } from '../../src/errors';
import { fetchMetrics, fetchStatus } from '../../src/status/client';
import { METRICS_CONTENT_TYPE, renderMetrics } from '../../src/status/metrics';
import { MetricsServer } from '../../src/status/metrics-server';
import { StatusServer } from '../../src/status/server';
import { sampleStatus } from '../helpers/status-doc';

interface Answer {
  status: number;
  type: string;
  encoding?: string;
  raw: Buffer;
  body: string;
}

function get(port: number, urlPath: string, method = 'GET', headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: urlPath, method, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const raw = Buffer.concat(chunks);
        const encoding = res.headers['content-encoding'];
        const body = (encoding === 'gzip' ? zlib.gunzipSync(raw) : raw).toString('utf8');
        resolve({ status: res.statusCode!, type: String(res.headers['content-type']), encoding, raw, body });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

describe('metrics over the status socket and --metrics-listen', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-metrics-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('answers GET /v1/metrics on the socket with the text format and its content type, next to /v1/status', async () => {
    const doc = sampleStatus();
    const socket = path.join(dir, 'status.sock');
    const server = new StatusServer(socket, () => doc);
    await server.start();
    try {
      expect(await fetchMetrics(socket)).toBe(renderMetrics(doc));
      expect(await fetchStatus(socket)).toEqual(doc);
      const type = await new Promise<string>((resolve, reject) =>
        http.get({ socketPath: socket, path: '/v1/metrics' }, (res) => {
          res.resume();
          resolve(String(res.headers['content-type']));
        }).on('error', reject),
      );
      expect(type).toBe(METRICS_CONTENT_TYPE);
    } finally {
      await server.stop();
    }
  });

  it('serves GET /metrics on TCP, 404 for anything else, and stops listening on stop', async () => {
    let doc = sampleStatus();
    const server = new MetricsServer('127.0.0.1', 0, () => doc);
    await server.start();
    const { port } = server.address()!;
    try {
      const r = await get(port, '/metrics');
      expect(r.status).toBe(200);
      expect(r.type).toBe(METRICS_CONTENT_TYPE);
      expect(r.body).toBe(renderMetrics(doc));
      doc = { ...doc, etcd: { ...doc.etcd, connected: false } }; // fresh on every scrape
      expect((await get(port, '/metrics?x=1')).body).toContain('cladnet_etcd_connected 0\n');
      expect((await get(port, '/metrics', 'HEAD')).status).toBe(200);
      // gzip when asked, as Prometheus does (Accept-Encoding: gzip); plain otherwise.
      const gz = await get(port, '/metrics', 'GET', { 'accept-encoding': 'gzip' });
      expect([gz.status, gz.encoding, gz.type]).toEqual([200, 'gzip', METRICS_CONTENT_TYPE]);
      expect(gz.body).toBe(renderMetrics(doc));
      expect(gz.raw.length).toBeLessThan(Buffer.byteLength(gz.body));
      expect((await get(port, '/metrics')).encoding).toBeUndefined();
      for (const [method, p] of [['GET', '/'], ['GET', '/v1/status'], ['GET', '/metricsx'], ['POST', '/metrics']] as const) {
        expect((await get(port, p, method)).status, `${method} ${p}`).toBe(404);
      }
    } finally {
      await server.stop();
    }
    await expect(get(port, '/metrics')).rejects.toThrow(/ECONNREFUSED/);
  });

  it('refuses an address it cannot bind with ECONFIG naming metricsListen', async () => {
    const holder = net.createServer();
    await new Promise<void>((r) => holder.listen(0, '127.0.0.1', () => r()));
    const port = (holder.address() as net.AddressInfo).port;
    try {
      const e = await new MetricsServer('127.0.0.1', port, () => sampleStatus()).start().then(
        () => null,
        (err: unknown) => err,
      );
      expect(isCladnetError(e, 'ECONFIG')).toBe(true);
      expect((e as { field?: string }).field).toBe('metricsListen');
      expect(String(e)).toMatch(/EADDRINUSE/);
    } finally {
      holder.close();
    }
  });

  it('takes metricsListen from a flag, CLADNET_METRICS_LISTEN or the file, and leaves it off by default', () => {
    const base = { network: 'demo', name: 'h1' };
    expect(loadAgentConfig({ flags: base }).metricsListen).toBeUndefined();
    expect(loadAgentConfig({ flags: { ...base, metricsListen: '127.0.0.1:9821' } }).metricsListen).toBe('127.0.0.1:9821');
    expect(loadAgentConfig({ flags: base, env: { CLADNET_METRICS_LISTEN: '[::1]:9821' } }).metricsListen).toBe('[::1]:9821');
    const f = path.join(dir, 'agent.json');
    fs.writeFileSync(f, JSON.stringify({ metricsListen: '198.18.0.1:9821' }));
    expect(loadAgentConfig({ file: f, flags: base }).metricsListen).toBe('198.18.0.1:9821');
    expect(parseListenAddress('127.0.0.1:9821')).toEqual({ host: '127.0.0.1', port: 9821 });
    expect(parseListenAddress('[::1]:9821')).toEqual({ host: '::1', port: 9821 });
    for (const bad of ['127.0.0.1', '127.0.0.1:0', '127.0.0.1:65536', '256.0.0.1:9821', 'localhost:9821', '[::1:9821', '::1:9821', '[nope]:1']) {
      expect(parseListenAddress(bad), bad).toBeNull();
    }
  });
});
