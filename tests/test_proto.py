import math

import pytest
import torch

from lvmlt.losses.proto import MemoryBank, PrototypeLoss, imbalance_weights


def test_imbalance_weights():
    torch.testing.assert_close(imbalance_weights([100, 10, 50]), torch.tensor([0.1, 1.0, 0.2]))
    w = imbalance_weights([100, 10, 1000], "log_inverse")
    torch.testing.assert_close(w, torch.tensor([0.5, 1.0, 0.0]))
    assert imbalance_weights([5, 0])[1] == 1.0  # empty class clamped, no inf


def test_memory_bank_fifo_order_and_stats():
    bank = MemoryBank(2, 1, 3)
    bank.push(torch.tensor([[1.0], [2.0]]), torch.tensor([0, 0]))
    bank.push(torch.tensor([[3.0], [9.0], [4.0]]), torch.tensor([0, 1, 0]))
    # class 0 saw 1,2,3,4 with M=3: the oldest (1) is gone
    assert bank.ordered(0).flatten().tolist() == [2.0, 3.0, 4.0]
    assert bank.ordered(1).flatten().tolist() == [9.0]
    mean, sigma, ready = bank.stats()
    assert mean[0].item() == pytest.approx(3.0)
    assert sigma[0].item() == pytest.approx(math.sqrt(2 / 3))
    assert mean[1].item() == 9.0 and sigma[1].item() == 0.0  # one element: sigma 0
    assert ready.tolist() == [True, True]
    bank.push(torch.tensor([[5.0], [6.0], [7.0], [8.0]]), torch.tensor([0, 0, 0, 0]))
    assert bank.ordered(0).flatten().tolist() == [6.0, 7.0, 8.0]
    bank.push(torch.tensor([[1.0]]), torch.tensor([-1]))  # skipped images are ignored
    assert int(bank.size.sum()) == 4


def _loss(**kw):
    # counts [100, 10]: w = [0.1, 1.0]; class 0 is head, class 1 tail for tau = 0.5
    loss = PrototypeLoss([100, 10], 2, bank_size=4, **kw)
    loss.bank.push(torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 0]))  # c0 = (1,0), sigma0 = (1,0)
    loss.bank.push(torch.tensor([[1.0, 1.0], [1.0, 3.0]]), torch.tensor([1, 1]))  # c1 = (1,2), sigma1 = (0,1)
    return loss


def test_head_term_hand_computed():
    loss = _loss(use_tail_std=False, use_tail_dist=False)
    z = torch.tensor([[3.0, 4.0], [1.0, 2.0]], requires_grad=True)
    t = loss({"embedding": z}, {"label": torch.tensor([0, 1])})
    # sample 0: d = 2^2 + 4^2 = 20, weight (1 - 0.1); sample 1 is tail: excluded; B = 2
    assert t["proto_head"].item() == pytest.approx(0.9 * 20 / 2)
    t["proto_head"].backward()
    torch.testing.assert_close(z.grad, torch.tensor([[0.9 * 2 * 2 / 2, 0.9 * 2 * 4 / 2], [0.0, 0.0]]))


def test_tail_dist_hand_computed():
    loss = _loss(use_head=False, use_tail_std=False, eps=0.0)
    z = torch.tensor([[3.0, 4.0], [1.0, 4.0]])
    t = loss({"embedding": z}, {"label": torch.tensor([0, 1])})
    # sample 1: d = (4-2)^2 = 4, w = 1: -log 4 / 2
    assert t["proto_tail_dist"].item() == pytest.approx(-math.log(4) / 2)


def test_tail_dist_guards_log_zero():
    loss = _loss(use_head=False, use_tail_std=False)
    t = loss({"embedding": torch.tensor([[1.0, 2.0]], requires_grad=True)}, {"label": torch.tensor([1])})
    assert math.isfinite(t["proto_tail_dist"].item())


def test_tail_std_is_one_of_the_two_shifted_prototypes():
    loss = _loss(use_head=False, use_tail_dist=False)
    z = torch.tensor([[1.0, 4.0]])
    # c1 +/- sigma1 = (1,3) or (1,1): d = 1 or 9
    seen = {round(loss({"embedding": z}, {"label": torch.tensor([1])})["proto_tail_std"].item(), 5) for _ in range(40)}
    assert seen == {1.0, 9.0}


def test_empty_bank_and_all_skipped_are_zero_with_graph():
    loss = PrototypeLoss([100, 10], 2, bank_size=4)
    z = torch.randn(3, 2, requires_grad=True)
    t = loss({"embedding": z}, {"label": torch.tensor([0, 1, -1])})
    total = sum(t.values())
    assert total.item() == 0.0
    total.backward()
    assert z.grad is not None
    loss.after_step({"embedding": z.detach()}, {"label": torch.tensor([0, 1, -1])})
    assert loss.bank.size.tolist() == [1, 1]


def test_thresholds_select_classes():
    # w = [0.1, 1.0]; with tau_head = 0.05 no class is "head"
    loss = _loss(use_tail_std=False, use_tail_dist=False, tau_head=0.05)
    t = loss({"embedding": torch.tensor([[3.0, 4.0]])}, {"label": torch.tensor([0])})
    assert t["proto_head"].item() == 0.0
