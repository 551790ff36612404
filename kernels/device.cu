/* device.cu: hisa_k_init, the one place the kernels look at the device.
 *
 * Why per runtime: kernel attributes (dynamic shared-memory limits) are per device, and the
 * figures the launchers size grids by (multiprocessor count, occupancy) belong to the device a
 * runtime was opened on; a process-wide "done" flag would leave a second GPU unprepared. So every
 * open runs this with its device current and keeps the result in its own state; no launch
 * queries the device again. Invariant: nothing here is a stream operation (graph capture safe). */
#include "common.cuh"

extern "C" int hisa_k_init(hisa_k_device *dev) {
    if (!dev || dev->ordinal < 0) return HISA_K_EINVAL;
    int sms = 0, major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev->ordinal) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev->ordinal) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev->ordinal) != cudaSuccess)
        return HISA_K_EDEVICE;
    dev->sm_count = sms;
    dev->cc_major = major;
    dev->cc_minor = minor;
    /* The kernels are built for sm_90a (wgmma, griddepcontrol): nothing else can run them. */
    if (major != 9 || sms < 1) return HISA_K_EINVAL;
    if (dev->path < HISA_K_PATH_AUTO || dev->path > HISA_K_PATH_HOPPER) return HISA_K_EINVAL;
    /* AUTO: the scorer measured fastest here. On the H200 the mma.sync scorer is (flat 64 x 128K
     * 605 us against 626 us for the wgmma one; bench/NOTES-decode.md), so it stays the default
     * until the Hopper scorer wins. */
    if (dev->path == HISA_K_PATH_AUTO) dev->path = HISA_K_PATH_PORTABLE;
    int err = hisa__k_select_init(dev);
    if (!err) err = hisa__k_prefill_init();
    return err;
}
