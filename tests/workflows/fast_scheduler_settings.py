"""The service's settings, with django-q2's scheduler running as a cluster starts.

django-q2's sentinel calls its scheduler from its guard loop once the loop has counted
30 s (`counter += guard_cycle` per cycle; `guard_cycle` is a documented Q_CLUSTER option,
0.5 s by default). With `guard_cycle` 30 the first cycle, right after the workers start,
runs the scheduler: a test starts a cluster once the Schedule rows are due, instead of
waiting half a minute. The guard then checks its workers every 30 s, which tests do
not need sooner.

    QCluster(env={"DJANGO_SETTINGS_MODULE": "tests.workflows.fast_scheduler_settings"})
"""

from polos_site.settings import *  # noqa: F403
from polos_site.settings import Q_CLUSTER

Q_CLUSTER = {**Q_CLUSTER, "guard_cycle": 30}
