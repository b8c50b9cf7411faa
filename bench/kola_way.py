"""A suite the way kola runs one on QEMU: bare qemu-system, a boot per test.

python3 kola_way.py QEMU_LOG BASE_IMAGE TESTS JOBS USER PASSWORD COMMAND

Takes the command line from a reconcile qemu.log (transport = "console"),
gives each test its own overlay on BASE_IMAGE, boots it, logs in at the
console, types COMMAND, waits for the prompt again and kills QEMU; JOBS at
once. Prints the wall time in milliseconds.
"""
import concurrent.futures, json, os, re, shlex, subprocess, sys, tempfile, time

log, base, tests, jobs, user, password, command = sys.argv[1:8]
argv = shlex.split(open(log).readline()[2:])
drive = next(i for i, a in enumerate(argv) if a.startswith("file=") and "id=disk0" in a)
size = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", base]))["virtual-size"]
work = tempfile.mkdtemp(prefix="kola-way-")


def one(i):
    overlay = os.path.join(work, f"t{i}.qcow2")
    subprocess.check_call(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "qcow2", "-b", base, overlay, str(size)])
    args = list(argv)
    args[drive] = re.sub(r"^file=[^,]*", "file=" + overlay.replace(",", ",,"), args[drive])
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seen, state = b"", 0
    try:
        while True:
            chunk = p.stdout.read1(65536)
            if not chunk:
                raise SystemExit(f"test {i}: QEMU exited (state {state})")
            seen = (seen + chunk)[-4096:]
            line = seen.rsplit(b"\n", 1)[-1]
            if state == 0 and re.search(rb"login:\s*$", line, re.I):
                p.stdin.write(user.encode() + b"\n"); p.stdin.flush(); state, seen = 1, b""
            elif state == 1 and re.search(rb"password:\s*$", line, re.I):
                p.stdin.write(password.encode() + b"\n"); p.stdin.flush(); state, seen = 2, b""
            elif state == 2 and re.search(rb"[#$] $", line):
                p.stdin.write(command.encode() + b"; echo kola-way-$((40+2))\n"); p.stdin.flush(); state, seen = 3, b""
            elif state == 3 and b"kola-way-42" in seen and re.search(rb"[#$] $", line):
                return
    finally:
        p.kill(); p.wait()
        os.unlink(overlay)


t0 = time.monotonic()
with concurrent.futures.ThreadPoolExecutor(int(jobs)) as pool:
    list(pool.map(one, range(int(tests))))
print(round((time.monotonic() - t0) * 1000))
os.rmdir(work)
