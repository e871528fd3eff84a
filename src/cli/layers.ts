/**
 * The vmm process's service layers for a backend and a spawn method:
 * VmmDevice (+ what it needs), Process and VmRegistry. bin/vmm adds the
 * imsg layer and the logger; tests that run the server in process use the
 * same wiring with their own imsg layer.
 */
import { Context, Effect, Layer, type Scope } from "effect"
import type { Backend, SpawnMethod } from "./args.ts"
import * as ProcessDirect from "../layers/ProcessDirect.ts"
import * as ProcessNode from "../layers/ProcessNode.ts"
import * as ProcessSpawner from "../layers/ProcessSpawner.ts"
import * as IoctlNative from "../layers/IoctlNative.ts"
import * as VmmDeviceVmm from "../layers/VmmDeviceVmm.ts"
import * as VmmDeviceProcess from "../layers/VmmDeviceProcess.ts"
import * as VmmDeviceMock from "../layers/VmmDeviceMock.ts"
import { makeVmRegistry, VmRegistryLive } from "../layers/VmRegistryLive.ts"
import { Process, type ProcessService } from "../services/Process.ts"
import { VmmDevice } from "../services/VmmDevice.ts"
import { VmRegistry, type VmRegistryService } from "../services/VmRegistry.ts"

/** The registry's started VMs, as the process backend sees them. */
export const registryVms = (registry: VmRegistryService): VmmDeviceProcess.ProcessBackendVms =>
  Effect.map(registry.all, (vms) =>
    vms
      .filter((vm) => vm.pid > 0)
      .map((vm) => ({
        vmmId: vm.vmmid,
        pid: vm.pid,
        name: vm.params.vmc_name,
        memorySize: vm.params.vmc_memranges[0]?.vmr_size ?? 0n,
        ncpus: vm.params.vmc_ncpus
      }))
  )

/** VmSource for the process backend: the registry's started VMs. */
export const vmSourceFromRegistry = Layer.effect(VmmDeviceProcess.VmSource, Effect.map(VmRegistry, registryVms))

export const deviceLayer = (backend: Backend) => {
  switch (backend) {
    case "vmm":
      return VmmDeviceVmm.layer.pipe(Layer.provide(IoctlNative.layer))
    case "process":
      return VmmDeviceProcess.layer.pipe(Layer.provide(vmSourceFromRegistry))
    case "mock":
      return VmmDeviceMock.layer
  }
}

/**
 * The Process service for a spawn method, with its fallbacks (each with a
 * warning): direct -> the spawner -> Node's spawn, spawner -> Node's spawn.
 */
export const processService = (spawn: SpawnMethod): Effect.Effect<ProcessService, never, Scope.Scope> => {
  switch (spawn) {
    case "spawner":
      return ProcessSpawner.makeOrNode
    case "direct":
      return ProcessDirect.makeOrWith(ProcessSpawner.makeOrNode, "the spawner")
    case "node":
      return ProcessNode.make
  }
}

export const processLayer = (spawn: SpawnMethod): Layer.Layer<Process> => Layer.scoped(Process, processService(spawn))

/** The same services composed with Layer's combinators (the reference for `vmmServiceLayers`). */
export const vmmServiceLayersComposed = (backend: Backend, spawn: SpawnMethod) =>
  Layer.provideMerge(deviceLayer(backend), Layer.mergeAll(processLayer(spawn), VmRegistryLive.layer))

/** What bin/vmm's program needs of a services context (a context may hold more). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const bin = (c: Context.Context<any>): Context.Context<Process | VmRegistry | VmmDevice> => c

/**
 * bin/vmm's services for a backend and a spawn method: Process, VmRegistry
 * and VmmDevice (with what the device's layer brings: Ioctl, VmmKernel for
 * the mock), built by each service's own constructor in one scoped effect:
 * the services and their lifetimes are `vmmServiceLayersComposed`'s (the
 * device ends first, the Process service last), but the composition costs
 * less of bin/vmm's start-up (~7 ms: Layer's memo map, a fiber per merged
 * layer and a scope per layer, all run once and cold at start-up).
 * test/cli/layers.test.ts checks both give the same services.
 */
export const vmmServices = (
  backend: Backend,
  spawn: SpawnMethod
): Effect.Effect<Context.Context<Process | VmRegistry | VmmDevice>, never, Scope.Scope> =>
  Effect.gen(function* () {
    const proc = yield* processService(spawn)
    const registry = yield* makeVmRegistry()
    const services = Context.make(Process, proc).pipe(Context.add(VmRegistry, registry))
    switch (backend) {
      case "process": {
        const device = yield* VmmDeviceProcess.make().pipe(
          Effect.provideService(VmmDeviceProcess.VmSource, registryVms(registry)),
          Effect.provideService(Process, proc)
        )
        return bin(Context.add(services, VmmDevice, device))
      }
      case "vmm":
        return bin(Context.merge(services, yield* Layer.build(VmmDeviceVmm.layer.pipe(Layer.provide(IoctlNative.layer)))))
      case "mock":
        // VmmKernel and Ioctl come along (the mock kernel), untyped here
        return bin(Context.merge(services, yield* Layer.build(VmmDeviceMock.layer)))
    }
  })

/**
 * `vmmServices` as a layer. bin/vmm itself runs `vmmServices` and provides
 * the context it returns, without building a layer: Layer's build
 * machinery, run once and cold, was another ~3 ms of start-up.
 */
export const vmmServiceLayers = (backend: Backend, spawn: SpawnMethod): Layer.Layer<Process | VmRegistry | VmmDevice> =>
  Layer.scopedContext(vmmServices(backend, spawn))
