import torch

from utils.progress import as_float, report, reporting


def test_reports_reach_the_receiver_only_inside_the_block():
    seen = []
    report(0, 3, data_fitting_loss=1.0)  # no receiver: nothing happens
    with reporting(lambda s, t, x: seen.append((s, t, {k: as_float(v) for k, v in x.items()}))):
        report(1, 3, data_fitting_loss=torch.tensor([1.0, 3.0]))
        with reporting(lambda s, t, x: seen.append(("inner", s))):
            report(2, 3)
        report(2, 3)
    report(3, 3)
    assert seen == [(1, 3, {"data_fitting_loss": 2.0}), ("inner", 2), (2, 3, {})]


def test_data_fit_baselines_report_the_reference_data_fitting_loss():
    """adam reports sqrt(misfit) per step under the reference's key ``data_fitting_loss``."""
    from algo.adam import AdamL2
    from tests.parity_toy import toy_net, toy_observation, toy_operator
    from tests.test_parity_toy_scaffolding import toy_arrays

    arrays = toy_arrays()
    op, obs = toy_operator(arrays, "corrected"), toy_observation(arrays)
    algo = AdamL2(toy_net(arrays), op, num_steps=20, lr=0.1, init="constant")
    seen = []
    with reporting(lambda s, t, x: seen.append((s, t, as_float(x["data_fitting_loss"])))):
        x = algo.inference(obs)
    assert [s for s, _, _ in seen] == list(range(20)) and {t for _, t, _ in seen} == {20}
    first = float(op.loss(torch.zeros_like(x), obs).sqrt())
    assert abs(seen[0][2] - first) < 1e-9 * first and seen[-1][2] < 0.5 * first
