import * as fs from 'node:fs';
import * as path from 'node:path';
import { runOk } from '../../src/testbed/run';
import { stopChild } from '../probes';
import { dpkgVersion, tailFile, Undo } from './util';
import type { Implementation, TunnelEnd } from './types';

export const WG_CIDR_BASE = '100.64.1'; // .1 on a, .2 on b, /24
export const WG_PORT = 51821;
export const WG_MTU = 1420;
/** wireguard-go keeps its UAPI sockets here, outside any namespace: names must be unique per run. */
const UAPI_DIR = '/var/run/wireguard';

/**
 * wireguard-go (userspace) in the foreground, one per host, configured with `wg set` and `ip`.
 * The kernel here has WireGuard built in, so wireguard-go only starts with its opt-in variable;
 * the kernel module itself is never used.
 */
export const wireguardGo: Implementation = {
  name: 'wireguard-go',
  needs: ['wireguard-go', 'wg'],
  version: () => dpkgVersion('wireguard-go'),
  async start(ctx) {
    const { topo } = ctx;
    const dir = path.join(topo.workDir, 'wireguard');
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const hosts = [ctx.a, ctx.b] as const;
    const undo = new Undo();
    // wireguard-go removes its socket when it gets SIGTERM (what teardown sends); if it had to be
    // killed, this removes the socket files of this run (and only those) when the bench exits.
    const socks = [1, 2].map((i) => path.join(UAPI_DIR, `${topo.id}-wg${i}.sock`));
    const rmSocks = () => socks.forEach((s) => fs.rmSync(s, { force: true }));
    process.on('exit', rmSocks);
    undo.push(() => void process.off('exit', rmSocks));
    try {
      const keys = [];
      for (let i = 0; i < 2; i++) {
        const priv = (await runOk(['wg', 'genkey'])).stdout.trim();
        const pub = (await runOk(['wg', 'pubkey'], { input: priv + '\n' })).stdout.trim();
        const file = path.join(dir, `h${i + 1}.key`);
        fs.writeFileSync(file, priv + '\n', { mode: 0o600 });
        keys.push({ file, pub });
      }
      const ends: TunnelEnd[] = [];
      const procs = [];
      for (let i = 0; i < 2; i++) {
        const h = hosts[i]!;
        const dev = `${topo.id}-wg${i + 1}`;
        const sock = socks[i]!;
        const child = topo.spawn(h.ns, ['wireguard-go', '-f', dev], {
          logFile: path.join(dir, `h${i + 1}.log`),
          env: { ...process.env, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD: '1', LOG_LEVEL: 'error' },
        });
        undo.push(async () => {
          await stopChild(child);
          fs.rmSync(sock, { force: true }); // left behind only if it had to be killed
        });
        const deadline = Date.now() + 5_000;
        while (!fs.existsSync(sock)) {
          if (child.exitCode !== null || child.signalCode !== null) {
            throw new Error(`wireguard-go exited (${child.exitCode ?? child.signalCode}): ${tailFile(path.join(dir, `h${i + 1}.log`))}`);
          }
          if (Date.now() > deadline) throw new Error(`wireguard-go made no UAPI socket ${sock} in 5 s`);
          await new Promise((r) => setTimeout(r, 50));
        }
        procs.push({ host: h.name, pid: child.pid!, comm: 'wireguard-go' });
        ends.push({ ns: h.ns, ip: `${WG_CIDR_BASE}.${i + 1}`, dev });
      }
      for (let i = 0; i < 2; i++) {
        const o = 1 - i;
        const { ns, dev, ip } = ends[i]!;
        await topo.exec(ns, [
          'wg', 'set', dev,
          'listen-port', String(WG_PORT),
          'private-key', keys[i]!.file,
          'peer', keys[o]!.pub,
          'endpoint', `${hosts[o]!.underlayIp}:${WG_PORT}`,
          'allowed-ips', `${ends[o]!.ip}/32`,
        ]);
        await topo.exec(ns, ['ip', 'addr', 'add', `${ip}/24`, 'dev', dev]);
        await topo.exec(ns, ['ip', 'link', 'set', dev, 'mtu', String(WG_MTU), 'up']);
      }
      return {
        a: ends[0]!,
        b: ends[1]!,
        udpPort: WG_PORT,
        procs,
        notes: { mtu: WG_MTU, cipher: 'chacha20-poly1305', mode: 'userspace (wireguard-go -f), not the kernel module' },
        async ready() {
          const r = await topo.exec(ends[0]!.ns, ['wg', 'show', ends[0]!.dev, 'latest-handshakes']);
          const t = Number(r.stdout.trim().split(/\s+/)[1] ?? 0);
          if (!(t > 0)) throw new Error('wireguard-go: no handshake yet');
        },
        stop: () => undo.unwind(),
      };
    } catch (e) {
      await undo.unwind();
      throw e;
    }
  },
};
