// TDS model T = Q^T Gamma(q)^-1 Q and its Jacobian dT/dp = -a^T B a, one work item per point.
// M: (9, 9) row-major Christoffel matrix, Gamma.ravel() = M (q (x) q).ravel()  (built from C on the host).
// B: (21, nfree) row-major, the quadratic form of each free constant on the upper-triangle products a_i a_j.
// Output J is (N, nfree) row-major; with jac == 0 only T is written.

__kernel void tds_model(__global const float *Q, __global const float *q, __constant float *M,
                        __constant float *B, const int nfree, const int jac,
                        __global float *T, __global float *J)
{
    const size_t n = get_global_id(0);
    const float Q0 = Q[3 * n], Q1 = Q[3 * n + 1], Q2 = Q[3 * n + 2];
    const float q0 = q[3 * n], q1 = q[3 * n + 1], q2 = q[3 * n + 2];
    const float qq[9] = {q0 * q0, q0 * q1, q0 * q2, q1 * q0, q1 * q1, q1 * q2, q2 * q0, q2 * q1, q2 * q2};

    float g[9];
    for (int r = 0; r < 9; ++r) {
        float s = 0.0f;
        for (int c = 0; c < 9; ++c) s += M[9 * r + c] * qq[c];
        g[r] = s;
    }
    // closed-form solve of the symmetric 3x3 system Gamma u = Q by the adjugate
    const float c00 = g[4] * g[8] - g[5] * g[5];
    const float c11 = g[0] * g[8] - g[2] * g[2];
    const float c22 = g[0] * g[4] - g[1] * g[1];
    const float c01 = g[2] * g[5] - g[1] * g[8];
    const float c02 = g[1] * g[5] - g[2] * g[4];
    const float c12 = g[1] * g[2] - g[0] * g[5];
    const float inv_det = 1.0f / (g[0] * c00 + g[1] * c01 + g[2] * c02);
    const float u0 = (c00 * Q0 + c01 * Q1 + c02 * Q2) * inv_det;
    const float u1 = (c01 * Q0 + c11 * Q1 + c12 * Q2) * inv_det;
    const float u2 = (c02 * Q0 + c12 * Q1 + c22 * Q2) * inv_det;
    T[n] = Q0 * u0 + Q1 * u1 + Q2 * u2;
    if (!jac) return;

    const float a[6] = {u0 * q0, u1 * q1, u2 * q2, u1 * q2 + u2 * q1, u0 * q2 + u2 * q0, u0 * q1 + u1 * q0};
    float aa[21];
    int m = 0;
    for (int i = 0; i < 6; ++i)
        for (int j = i; j < 6; ++j) aa[m++] = a[i] * a[j];
    for (int k = 0; k < nfree; ++k) {
        float s = 0.0f;
        for (int r = 0; r < 21; ++r) s += aa[r] * B[r * nfree + k];
        J[n * nfree + k] = -s;
    }
}

// The same model averaged over each point's exposure: point n owns the nodes start[n] .. start[n + 1] - 1
// of Qe, qe (M, 3) with weights w (summing to 1 per point).  T and the Voigt products a_i a_j are averaged
// node by node; the Jacobian is linear in those products, so it is formed once per point.
__kernel void tds_model_exposure(__global const float *Qe, __global const float *qe, __global const float *w,
                                 __global const int *start, __constant float *M, __constant float *B,
                                 const int nfree, const int jac, __global float *T, __global float *J)
{
    const size_t n = get_global_id(0);
    float t_sum = 0.0f;
    float aa[21];
    for (int r = 0; r < 21; ++r) aa[r] = 0.0f;
    for (int e = start[n]; e < start[n + 1]; ++e) {
        const float Q0 = Qe[3 * e], Q1 = Qe[3 * e + 1], Q2 = Qe[3 * e + 2];
        const float q0 = qe[3 * e], q1 = qe[3 * e + 1], q2 = qe[3 * e + 2];
        const float qq[9] = {q0 * q0, q0 * q1, q0 * q2, q1 * q0, q1 * q1, q1 * q2, q2 * q0, q2 * q1, q2 * q2};
        float g[9];
        for (int r = 0; r < 9; ++r) {
            float s = 0.0f;
            for (int c = 0; c < 9; ++c) s += M[9 * r + c] * qq[c];
            g[r] = s;
        }
        const float c00 = g[4] * g[8] - g[5] * g[5];
        const float c11 = g[0] * g[8] - g[2] * g[2];
        const float c22 = g[0] * g[4] - g[1] * g[1];
        const float c01 = g[2] * g[5] - g[1] * g[8];
        const float c02 = g[1] * g[5] - g[2] * g[4];
        const float c12 = g[1] * g[2] - g[0] * g[5];
        const float inv_det = 1.0f / (g[0] * c00 + g[1] * c01 + g[2] * c02);
        const float u0 = (c00 * Q0 + c01 * Q1 + c02 * Q2) * inv_det;
        const float u1 = (c01 * Q0 + c11 * Q1 + c12 * Q2) * inv_det;
        const float u2 = (c02 * Q0 + c12 * Q1 + c22 * Q2) * inv_det;
        const float we = w[e];
        t_sum += we * (Q0 * u0 + Q1 * u1 + Q2 * u2);
        if (jac) {
            const float a[6] = {u0 * q0, u1 * q1, u2 * q2, u1 * q2 + u2 * q1, u0 * q2 + u2 * q0,
                                u0 * q1 + u1 * q0};
            int m = 0;
            for (int i = 0; i < 6; ++i)
                for (int j = i; j < 6; ++j) aa[m++] += we * a[i] * a[j];
        }
    }
    T[n] = t_sum;
    if (!jac) return;
    for (int k = 0; k < nfree; ++k) {
        float s = 0.0f;
        for (int r = 0; r < 21; ++r) s += aa[r] * B[r * nfree + k];
        J[n * nfree + k] = -s;
    }
}
