import * as fs from 'node:fs';
import * as path from 'node:path';
import { run, runOk } from '../../src/testbed/run';
import { stopChild } from '../probes';
import { dpkgVersion, tailFile, Undo } from './util';
import type { Implementation, TunnelEnd } from './types';

export const WG_CIDR_BASE = '100.64.1'; // .1 on a, .2 on b, /24
export const WG_PORT = 51821;
export const WG_MTU = 1420;
/** wireguard-go keeps its UAPI sockets here, outside any namespace: names must be unique per run. */
const UAPI_DIR = '/var/run/wireguard';

/**
 * Upstream's newest wireguard-go (0.0.20250522: TUN offloads, UDP GSO/GRO, 7 MiB socket buffers),
 * built for this machine next to the project: ../shared/anchors/wireguard-go/ (README.md there says
 * how). `CLADNET_BENCH_WG_NEW` or `--wireguard-go-new PATH` points elsewhere.
 */
export const WG_NEW_ENV = 'CLADNET_BENCH_WG_NEW';
export function defaultWgNewPath(repo: string): string {
  return path.resolve(repo, '..', 'shared', 'anchors', 'wireguard-go', 'wireguard-go');
}

/** `v0.0.20250522` from `wireguard-go --version` output. */
export function parseWgVersion(out: string): string | null {
  const m = /wireguard-go v?(\d[\w.+-]*)/.exec(out);
  return m ? m[1]! : null;
}

/**
 * wireguard-go (userspace) in the foreground, one per host, configured with `wg set` and `ip`.
 * The kernel here has WireGuard built in, so wireguard-go only starts with its opt-in variable;
 * the kernel module itself is never used. Tuning as its documentation has it: nothing beyond MTU
 * 1420 (the newer build sizes its own socket buffers and turns on its offloads by itself).
 */
function wireguardImpl(name: 'wireguard-go' | 'wireguard-go-new', binary: string, devTag: string): Implementation {
  return {
    name,
    needs: name === 'wireguard-go' ? ['wireguard-go', 'wg'] : ['wg'],
    async available() {
      if (name === 'wireguard-go') return null; // on PATH: `needs` checks it
      try {
        fs.accessSync(binary, fs.constants.X_OK);
        return null;
      } catch {
        return `${binary} is absent or not executable (build it with build.sh there, or point ${WG_NEW_ENV} or --wireguard-go-new at a build)`;
      }
    },
    async version() {
      if (name === 'wireguard-go') return dpkgVersion('wireguard-go');
      return parseWgVersion((await run([binary, '--version'], { timeoutMs: 5_000 })).stdout);
    },
    async start(ctx) {
      const { topo } = ctx;
      const dir = path.join(topo.workDir, name);
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
      const hosts = [ctx.a, ctx.b] as const;
      const undo = new Undo();
      // wireguard-go removes its socket when it gets SIGTERM (what teardown sends); if it had to be
      // killed, this removes the socket files of this run (and only those) when the bench exits.
      const socks = [1, 2].map((i) => path.join(UAPI_DIR, `${topo.id}-${devTag}${i}.sock`));
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
          const dev = `${topo.id}-${devTag}${i + 1}`;
          const sock = socks[i]!;
          const child = topo.spawn(h.ns, [binary, '-f', dev], {
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
          notes: {
            mtu: WG_MTU,
            cipher: 'chacha20-poly1305',
            mode: 'userspace (wireguard-go -f), not the kernel module',
            binary,
          },
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
}

/** Debian's wireguard-go 0.0.20220316 (before wireguard-go's TUN offloads, UDP GSO/GRO and large buffers). */
export const wireguardGo = wireguardImpl('wireguard-go', 'wireguard-go', 'wg');

/** Upstream's newest wireguard-go at `bin` (run.ts: --wireguard-go-new, else $CLADNET_BENCH_WG_NEW, else defaultWgNewPath). */
export function wireguardGoNew(bin: string): Implementation {
  return wireguardImpl('wireguard-go-new', bin, 'wgn');
}
