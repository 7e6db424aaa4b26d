/**
 * The command runner (src/sys/command-runner.ts) and its recording twin: the
 * real runner's one-line errors, checked with harmless commands (sh, cat,
 * sleep; no root), and the twin failing exactly as the real one does, so
 * that the module tests over the twin (control-plane.test.ts) exercise the
 * same error paths as the kernel would.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CommandError, failureReason, systemRunner } from '../../src/sys/command-runner.js';
import { RecordingRunner } from '../../src/sys/recording-runner.js';

function caught(f: () => unknown): CommandError {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof CommandError, String(e));
    return e;
  }
  assert.fail('did not throw');
}

describe('the real runner', () => {
  it('returns stdout, feeds stdin', () => {
    assert.deepEqual(systemRunner.run('cat', [], { input: 'one\ntwo\n' }), {
      stdout: 'one\ntwo\n',
      stderr: '',
      status: 0,
    });
    // Without input, stdin is /dev/null: cat ends at once instead of waiting.
    assert.equal(systemRunner.run('cat', []).stdout, '');
  });

  it('a failure is one line naming the command and the first line of its stderr', () => {
    const e = caught(() =>
      systemRunner.run('sh', [
        '-c',
        'echo "RTNETLINK answers: File exists" >&2; echo more >&2; exit 2',
      ]),
    );
    assert.equal(
      e.message,
      'sh -c echo "RTNETLINK answers: File exists" >&2; echo more >&2; exit 2: RTNETLINK answers: File exists',
    );
    assert.equal(e.status, 2);
    assert.equal(e.kind, 'internal');
    assert.equal(e.code, 'SYSTEM');
    assert.equal(e.missing, false);
    assert.match(e.stderr, /more/);
    assert.ok(!e.message.includes('Command failed'), 'not Node’s wrapper text');
  });

  it("prefers nft's 'Error:' line, and says the status when stderr is empty", () => {
    const e = caught(() =>
      systemRunner.run('sh', [
        '-c',
        'echo "delete table inet x" >&2; echo "Error: No such file" >&2; exit 1',
      ]),
    );
    assert.equal(e.reason, 'Error: No such file');
    assert.equal(
      caught(() => systemRunner.run('sh', ['-c', 'exit 3'])).reason,
      'exited with status 3',
    );
  });

  it('allowFail returns the status instead of throwing', () => {
    const r = systemRunner.run('sh', ['-c', 'echo out; echo err >&2; exit 4'], { allowFail: true });
    assert.deepEqual(r, { stdout: 'out\n', stderr: 'err\n', status: 4 });
  });

  it('a missing binary is flagged (also with allowFail), as a user error', () => {
    for (const allowFail of [false, true]) {
      const e = caught(() => systemRunner.run('shallot-no-such-binary', ['x'], { allowFail }));
      assert.equal(e.missing, true);
      assert.equal(e.kind, 'user');
      assert.equal(e.message, "the 'shallot-no-such-binary' command is missing");
    }
  });

  it('a timeout kills the command and says so', () => {
    const t0 = Date.now();
    const e = caught(() => systemRunner.run('sleep', ['5'], { timeoutMs: 200, allowFail: true }));
    assert.ok(Date.now() - t0 < 4000);
    assert.equal(e.timedOut, true);
    assert.equal(e.message, 'sleep 5: timed out after 200 ms');
  });

  it('failureReason skips blank lines', () => {
    assert.equal(failureReason('\n\n  first  \nsecond\n', 1), 'first');
    assert.equal(failureReason('', null, 'SIGKILL'), 'killed by SIGKILL');
  });
});

describe('the recording twin', () => {
  it('records commands, stdin and sysctl writes in order; unscripted commands succeed', () => {
    const r = new RecordingRunner().setSysctl('/proc/sys/x', '0');
    assert.deepEqual(r.run('ip', ['link', 'show']), { stdout: '', stderr: '', status: 0 });
    r.write('/proc/sys/x', '1');
    r.run('nft', ['-f', '-'], { input: 'add table inet t\n' });
    assert.deepEqual(r.log, ['ip link show', 'sysctl /proc/sys/x=1', 'nft -f -']);
    assert.deepEqual(r.lines('nft'), ['nft -f -']);
    assert.equal(r.commands[1]?.input, 'add table inet t\n');
    assert.equal(r.read('/proc/sys/x'), '1');
  });

  it('the first matching rule answers; a limited rule runs out', () => {
    const r = new RecordingRunner()
      .on('ip route add', { status: 2, stderr: 'RTNETLINK answers: File exists' }, 1)
      .on(/^ip -j/, { stdout: '[]' });
    assert.equal(r.run('ip', ['-j', 'route', 'get', '1.1.1.1']).stdout, '[]');
    assert.equal(caught(() => r.run('ip', ['route', 'add', '1/8'])).status, 2);
    assert.equal(r.run('ip', ['route', 'add', '1/8']).status, 0, 'the rule ran out');
    // A prefix matches whole words only.
    r.on('ip ro', { status: 1 });
    assert.equal(r.run('ip', ['route', 'show']).status, 0);
  });

  it('a scripted failure is the same error the real runner gives', () => {
    const script = 'echo "Error: Could not process rule: Operation not permitted" >&2; exit 1';
    const real = caught(() => systemRunner.run('sh', ['-c', script]));
    const r = new RecordingRunner().on('sh', {
      status: 1,
      stderr: 'Error: Could not process rule: Operation not permitted\n',
    });
    const twin = caught(() => r.run('sh', ['-c', script]));
    for (const k of ['message', 'code', 'kind', 'status', 'reason', 'missing'] as const) {
      assert.deepEqual(twin[k], real[k], k);
    }
    const missing = caught(() => new RecordingRunner().on('nft', { missing: true }).run('nft', []));
    const realMissing = caught(() => systemRunner.run('shallot-no-such-binary', []));
    assert.equal(missing.missing, true);
    assert.equal(missing.kind, realMissing.kind);
  });

  it('sysctl failures carry an errno code; unknown sysctls are ENOENT', () => {
    const r = new RecordingRunner().setSysctl('/a', '0').failSysctl('/a', 'EACCES');
    assert.equal(r.read('/a'), '0');
    assert.throws(() => r.write('/a', '1'), { code: 'EACCES' });
    assert.equal(r.sysctl('/a'), '0');
    assert.throws(() => r.read('/b'), { code: 'ENOENT' });
  });
});
