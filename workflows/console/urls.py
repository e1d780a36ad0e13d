"""The staff console's pages, in the `workflows` namespace."""

from django.urls import path
from django.views.generic import RedirectView

from workflows.console import views

app_name = "workflows"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="workflows:run_list"), name="home"),
    path("runs/", views.run_list, name="run_list"),
    # orders' admin and API link to exactly /runs/<run id>/.
    path("runs/<uuid:run_id>/", views.run_detail, name="run_detail"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("workflows/", views.workflow_list, name="workflow_list"),
    path(
        "workflows/<str:workflow_id>/start/",
        views.workflow_start_view,
        name="workflow_start",
    ),
]
