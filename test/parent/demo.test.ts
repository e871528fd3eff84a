/**
 * The main job (`npm run demo`) interrupted: Ctrl-C ends the vmm and every
 * VM and removes the guest files, even when node gets SIGINT twice (under
 * npm and tsx, the terminal's SIGINT and tsx's relay of it), and says so
 * with exit 130.
 */
import { spawn } from "node:child_process"
import { readdirSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"

const root = fileURLToPath(new URL("../../", import.meta.url))
const demoDirs = () => new Set(readdirSync(tmpdir()).filter((n) => n.startsWith("vmd-vmm-demo-")))
const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe("the demo", () => {
  it("interrupted with two SIGINTs while VMs run: exit 130, the vmm and its VMs gone, no guest files left", async () => {
    const before = demoDirs()
    const child = spawn(process.execPath, ["--import", "tsx", join(root, "src/parent/demo.ts")], {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, NODE_OPTIONS: "" }
    })
    let out = ""
    let err = ""
    child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d))
    child.stderr.setEncoding("utf8").on("data", (d: string) => (err += d))
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
    for (let i = 0; i < 1200 && !out.includes("pausing"); i++) await new Promise((r) => setTimeout(r, 50))
    expect(out).toContain("pausing")
    const vmm = /vmm is pid (\d+)/.exec(out)
    expect(vmm).not.toBe(null)
    child.kill("SIGINT")
    await new Promise((r) => setTimeout(r, 50))
    child.kill("SIGINT")
    expect(await exited).toBe(130)
    expect(err).toContain("demo: interrupted")
    expect(alive(Number(vmm![1]))).toBe(false)
    expect([...demoDirs()].filter((d) => !before.has(d))).toEqual([])
  }, 120_000)
})
