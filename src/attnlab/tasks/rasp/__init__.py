"""The RASP suite (Weiss, Goldberg and Yahav 2021; tech-srl/RASP-exps): one module per task, `rasp_*` in TASKS."""

from attnlab.tasks.rasp.base import RaspTask
from attnlab.tasks.rasp.double_hist import DoubleHist
from attnlab.tasks.rasp.dyck import Dyck1, Dyck2
from attnlab.tasks.rasp.hist import Hist, HistBos
from attnlab.tasks.rasp.most_freq import MostFreq
from attnlab.tasks.rasp.reverse import Reverse
from attnlab.tasks.rasp.sort import Sort

SUITE: tuple[type[RaspTask], ...] = (Reverse, Hist, HistBos, DoubleHist, Sort, MostFreq, Dyck1, Dyck2)

__all__ = ["SUITE", "RaspTask"]
