import * as fs from 'node:fs';
import * as path from 'node:path';
import { run, runOk } from '../../src/testbed/run';
import { stopChild } from '../probes';
import { tailFile, Undo } from './util';
import type { Implementation, TunnelEnd } from './types';

export const NEBULA_CIDR_BASE = '100.64.2'; // .1 on a, .2 on b, /24
export const NEBULA_PORT = 4242;
export const NEBULA_MTU = 1420;
export const NEBULA_DEV = 'nebula1';
/**
 * listen.read_buffer / listen.write_buffer: what cladnet asks for its own UDP socket (4 MiB,
 * SO_RCVBUFFORCE/SO_SNDBUFFORCE as root; the kernel doubles both). Nebula's example config documents
 * these two for exactly this; left unset, it keeps the system default (about 208 KiB) and its
 * receiver drops hundreds of thousands of datagrams per round.
 */
export const NEBULA_SOCKET_BUFFER = 4 << 20;

/**
 * The config of one nebula host: no lighthouse, the peer pinned in static_host_map, punching off,
 * every packet allowed by the firewall. Written as JSON, which nebula's YAML loader reads as is.
 * Tuned as nebula's example config advises for throughput: socket buffers (NEBULA_SOCKET_BUFFER)
 * and tun MTU 1420 like every tunnel here. Everything else is nebula's default (one routine, so one
 * TUN queue and one UDP reader; default cipher unless `cipher`).
 */
export function nebulaConfig(o: {
  dir: string;
  host: string;
  peerOverlay: string;
  peerUnderlay: string;
  cipher: 'aes' | 'chachapoly';
}): Record<string, unknown> {
  const any = [{ port: 'any', proto: 'any', host: 'any' }];
  return {
    pki: { ca: path.join(o.dir, 'ca.crt'), cert: path.join(o.dir, `${o.host}.crt`), key: path.join(o.dir, `${o.host}.key`) },
    static_host_map: { [o.peerOverlay]: [`${o.peerUnderlay}:${NEBULA_PORT}`] },
    lighthouse: { am_lighthouse: false, interval: 60, hosts: [] },
    listen: { host: '0.0.0.0', port: NEBULA_PORT, read_buffer: NEBULA_SOCKET_BUFFER, write_buffer: NEBULA_SOCKET_BUFFER },
    punchy: { punch: false, respond: false },
    cipher: o.cipher,
    tun: { disabled: false, dev: NEBULA_DEV, drop_local_broadcast: false, drop_multicast: false, tx_queue: 500, mtu: NEBULA_MTU },
    logging: { level: 'info', format: 'text' },
    firewall: { outbound: any, inbound: any },
  };
}

/** nebula 1.6.1 from Debian: a throwaway CA, a cert per host, and a static two-host config. */
export const nebula: Implementation = {
  name: 'nebula',
  needs: ['nebula', 'nebula-cert'],
  async version() {
    const r = await run(['nebula', '-version'], { timeoutMs: 5_000 });
    const m = /Version:\s*(\S+)/.exec(r.stdout);
    return m ? m[1]! : null;
  },
  async start(ctx) {
    const { topo } = ctx;
    const dir = path.join(topo.workDir, 'nebula');
    fs.rmSync(dir, { recursive: true, force: true }); // a fresh CA every round
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const hosts = [ctx.a, ctx.b] as const;
    const ends: TunnelEnd[] = hosts.map((h, i) => ({ ns: h.ns, ip: `${NEBULA_CIDR_BASE}.${i + 1}`, dev: NEBULA_DEV }));
    const undo = new Undo();
    try {
      const cert = (args: string[]) => runOk(['nebula-cert', ...args], { timeoutMs: 10_000 });
      await cert(['ca', '-name', 'cladnet-bench', '-duration', '24h', '-out-crt', `${dir}/ca.crt`, '-out-key', `${dir}/ca.key`]);
      const procs = [];
      for (let i = 0; i < 2; i++) {
        const h = hosts[i]!;
        const o = 1 - i;
        await cert([
          'sign', '-ca-crt', `${dir}/ca.crt`, '-ca-key', `${dir}/ca.key`, '-name', h.name,
          '-ip', `${ends[i]!.ip}/24`, '-out-crt', `${dir}/${h.name}.crt`, '-out-key', `${dir}/${h.name}.key`,
        ]);
        const cfgFile = path.join(dir, `${h.name}.yml`);
        const cfg = nebulaConfig({ dir, host: h.name, peerOverlay: ends[o]!.ip, peerUnderlay: hosts[o]!.underlayIp, cipher: ctx.nebulaCipher });
        fs.writeFileSync(cfgFile, JSON.stringify(cfg, null, 2) + '\n');
        await cert(['print', '-path', `${dir}/${h.name}.crt`]);
        const log = path.join(dir, `${h.name}.log`);
        const child = topo.spawn(h.ns, ['nebula', '-config', cfgFile], { logFile: log });
        undo.push(() => stopChild(child));
        // Up when its TUN device exists; the handshake happens on the first packet.
        const deadline = Date.now() + 10_000;
        for (;;) {
          if (child.exitCode !== null || child.signalCode !== null) {
            throw new Error(`nebula exited (${child.exitCode ?? child.signalCode}): ${tailFile(log)}`);
          }
          if ((await topo.tryExec(h.ns, ['ip', 'link', 'show', NEBULA_DEV])).code === 0) break;
          if (Date.now() > deadline) throw new Error(`nebula made no ${NEBULA_DEV} in 10 s: ${tailFile(log)}`);
          await new Promise((r) => setTimeout(r, 100));
        }
        procs.push({ host: h.name, pid: child.pid!, comm: 'nebula' });
      }
      return {
        a: ends[0]!,
        b: ends[1]!,
        udpPort: NEBULA_PORT,
        procs,
        notes: {
          mtu: NEBULA_MTU,
          cipher: ctx.nebulaCipher === 'aes' ? 'aes-256-gcm (nebula default)' : 'chacha20-poly1305',
          routines: 1,
          socketBuffers: `listen.read_buffer = listen.write_buffer = ${NEBULA_SOCKET_BUFFER}`,
        },
        stop: () => undo.unwind(),
      };
    } catch (e) {
      await undo.unwind();
      throw e;
    }
  },
};
