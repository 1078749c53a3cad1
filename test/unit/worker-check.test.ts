/**
 * qemu-test's RPC worker check (src/qemu/worker-check.ts) and the boot check's worker lines: which
 * heads admit QEMU's host address, and how one connection through the port forwarding is told apart
 * (the real forwarding and ggml-rpc-server are in test/e2e/custom-kernel.test.ts). Here TCP servers on
 * 127.0.0.1 behave as the two ends do: QEMU's forwarding closing the host's socket at once when the
 * guest refuses, and ggml-rpc-server closing a connection whose first byte is not HELLO.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:net';
import { headsAdmit, probeForwardedWorker, workerCheck } from '../../src/qemu/worker-check.js';
import { parseCheckLog } from '../../src/qemu/index.js';

const servers: Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});
async function serve(onConn: (s: import('node:net').Socket) => void): Promise<string> {
  const srv = createServer(onConn);
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return `127.0.0.1:${(srv.address() as { port: number }).port}`;
}
/** As ggml-rpc-server: waits for the first byte, and closes when it is not HELLO (14). */
const rpcLike = (s: import('node:net').Socket) => s.once('data', (d) => d[0] !== 14 && s.end());

describe('RPC worker check', () => {
  it('knows which fleet.heads admit 10.0.2.2', () => {
    expect(headsAdmit(['10.0.2.2'], '10.0.2.2')).toBe(true);
    expect(headsAdmit(['10.0.0.0/8'], '10.0.2.2')).toBe(true);
    expect(headsAdmit(['10.0.0.1', '192.168.1.0/24'], '10.0.2.2')).toBe(false);
    expect(headsAdmit([], '10.0.2.2')).toBe(false);
  });

  it('tells a connection the server took from one the guest refused, and from a port that keeps it without answering', async () => {
    expect((await probeForwardedWorker(await serve(rpcLike), { holdMs: 200 })).outcome).toBe('served');
    expect(await probeForwardedWorker(await serve((s) => s.end()), { holdMs: 200 })).toEqual({ outcome: 'refused', detail: 'the guest refused the connection (the forwarding closed it at once)' });
    expect(await probeForwardedWorker(await serve((s) => s.destroy()), { holdMs: 200 })).toMatchObject({ outcome: expect.stringMatching(/refused|error/) });
    expect((await probeForwardedWorker(await serve(() => {}), { holdMs: 100, closeMs: 300 })).outcome).toBe('held');
    const free = await serve(() => {});
    servers.pop()!.close();
    await new Promise((r) => setTimeout(r, 50));
    expect((await probeForwardedWorker(free, { holdMs: 100 })).outcome).toBe('refused');
  });

  it('passes when the outcome is the one fleet.heads call for, and says what was expected when not', async () => {
    const served = await serve(rpcLike);
    const refused = await serve((s) => s.end());
    expect(await workerCheck(served, { listen: '10.0.2.15:50052', heads: ['10.0.2.2'] }, { holdMs: 200 })).toMatchObject({ ok: true, detail: expect.stringMatching(/^a connection from the host \(10\.0\.2\.2, a head in fleet\.heads\) to 10\.0\.2\.15:50052: ggml-rpc-server took/) });
    expect(await workerCheck(refused, { listen: '10.0.2.15:50052', heads: ['10.0.0.1'] }, { holdMs: 200 })).toMatchObject({ ok: true, detail: expect.stringMatching(/not in fleet\.heads.*refused/) });
    expect(await workerCheck(refused, { listen: '10.0.2.15:50052', heads: ['10.0.2.2'] }, { holdMs: 200 })).toMatchObject({ ok: false, detail: expect.stringMatching(/expected ggml-rpc-server to take it/) });
    expect(await workerCheck(await serve(rpcLike), { listen: '10.0.2.15:50052', heads: ['10.0.0.1'] }, { holdMs: 200 })).toMatchObject({ ok: false, detail: expect.stringMatching(/expected the firewall to refuse it/) });
  });

  it("reads the boot check's worker lines", () => {
    const { guest } = parseCheckLog(
      [
        'AIOS-CHECK-BEGIN',
        'AIOS-CHECK rpc_worker_state=active',
        'AIOS-CHECK rpc_worker_listen=10.0.2.15:50052',
        'AIOS-CHECK rpc_worker_listening=yes',
        'AIOS-CHECK rpc_firewall_state=active',
        'AIOS-CHECK-RPC-RULE tcp dport 50052 ip saddr 10.0.2.2 accept',
        'AIOS-CHECK-RPC-RULE tcp dport 50052 reject with tcp reset',
        'AIOS-CHECK rpc_worker_from_self=refused',
        'AIOS-CHECK-END',
      ].join('\r\n'),
    );
    expect(guest.rpcWorker).toEqual({ state: 'active', listen: '10.0.2.15:50052', listening: true, firewall: 'active', rules: ['tcp dport 50052 ip saddr 10.0.2.2 accept', 'tcp dport 50052 reject with tcp reset'], fromSelf: 'refused' });
    expect(parseCheckLog('AIOS-CHECK-BEGIN\nAIOS-CHECK state=running\nAIOS-CHECK-END\n').guest.rpcWorker).toBeUndefined();
  });
});
